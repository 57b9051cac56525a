"""Multi-exit encoders for early-exit BERT (DeeBERT / RomeBERT style)."""

from gradsurg.multiexit.adapters import (
    ADAPTERS,
    BertAdapter,
    EncoderAdapter,
    LayerMask,
    make_adapter,
    register_adapter,
)
from gradsurg.multiexit.backbones import load_backbone, resolve_backbone, tiny_bert_config
from gradsurg.multiexit.exits import Exit
from gradsurg.multiexit.loss_terms import self_distillation_loss, task_loss
from gradsurg.multiexit.model import MultiExitConfig, MultiExitModel

__all__ = [
    "ADAPTERS",
    "BertAdapter",
    "EncoderAdapter",
    "Exit",
    "LayerMask",
    "MultiExitConfig",
    "MultiExitModel",
    "load_backbone",
    "make_adapter",
    "register_adapter",
    "resolve_backbone",
    "self_distillation_loss",
    "task_loss",
    "tiny_bert_config",
]
