"""Multi-exit encoders for early-exit BERT (DeeBERT / RomeBERT style)."""

from gradsurg.multiexit.adapters import (
    ADAPTERS,
    BertAdapter,
    EncoderAdapter,
    LayerMask,
    make_adapter,
    register_adapter,
)
from gradsurg.multiexit.adapters_albert import AlbertAdapter
from gradsurg.multiexit.adapters_mpnet import MPNetAdapter
from gradsurg.multiexit.adapters_roberta import RobertaAdapter
from gradsurg.multiexit.backbones import (
    load_backbone,
    resolve_backbone,
    tiny_bert_config,
    tiny_config,
)
from gradsurg.multiexit.exits import Exit
from gradsurg.multiexit.losses.functions import self_distillation_loss, task_loss
from gradsurg.multiexit.model import MultiExitConfig, MultiExitModel

__all__ = [
    "ADAPTERS",
    "AlbertAdapter",
    "BertAdapter",
    "EncoderAdapter",
    "Exit",
    "LayerMask",
    "MPNetAdapter",
    "MultiExitConfig",
    "MultiExitModel",
    "RobertaAdapter",
    "load_backbone",
    "make_adapter",
    "register_adapter",
    "resolve_backbone",
    "self_distillation_loss",
    "task_loss",
    "tiny_bert_config",
    "tiny_config",
]
