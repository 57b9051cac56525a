"""Multi-exit encoders for early-exit BERT (DeeBERT / RomeBERT style), organised by role.

- ``model``, ``exits``, ``backbones``: the model (a backbone plus one classifier per layer).
- ``adapters/``: layer-by-layer access to each Hugging Face architecture, one file each.
- ``losses/``: training losses of the exits (functions and registered loss terms).
- ``policies``: exit rules (when an example stops), built by ``POLICIES.build``.
- ``exit_loop``: runs an encoder layer by layer under a policy, dropping finished rows.
- ``evaluation/``: offline scoring and sweeps over collected exit logits.
- ``serving/``: saved models at work: loading, batched prediction on texts, timed evaluation.
"""

from gradsurg.multiexit.adapters import (
    ADAPTERS,
    AlbertAdapter,
    BertAdapter,
    EncoderAdapter,
    LayerListAdapter,
    LayerMask,
    MPNetAdapter,
    RobertaAdapter,
    make_adapter,
)
from gradsurg.multiexit.backbones import (
    load_backbone,
    resolve_backbone,
    tiny_bert_config,
    tiny_config,
)
from gradsurg.multiexit.exit_loop import EarlyExitOutput, EarlyExitRunner, simulate_exits
from gradsurg.multiexit.exits import Exit
from gradsurg.multiexit.losses.functions import self_distillation_loss, task_loss
from gradsurg.multiexit.model import MultiExitConfig, MultiExitModel
from gradsurg.multiexit.policies import POLICIES, ExitPolicy

__all__ = [
    "ADAPTERS",
    "POLICIES",
    "AlbertAdapter",
    "BertAdapter",
    "EarlyExitOutput",
    "EarlyExitRunner",
    "EncoderAdapter",
    "Exit",
    "ExitPolicy",
    "LayerListAdapter",
    "LayerMask",
    "MPNetAdapter",
    "MultiExitConfig",
    "MultiExitModel",
    "RobertaAdapter",
    "load_backbone",
    "make_adapter",
    "resolve_backbone",
    "self_distillation_loss",
    "simulate_exits",
    "task_loss",
    "tiny_bert_config",
    "tiny_config",
]
