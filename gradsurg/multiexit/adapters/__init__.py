"""Backbone adapters: layer-by-layer access to Hugging Face encoders, one file per architecture.

Importing this package registers the built-in adapters (BERT, RoBERTa, MPNet, ALBERT) in
:data:`ADAPTERS`, BERT first (the order error messages list them in).
"""

# Registration order is import order: BERT first, the others as they were added.
from gradsurg.multiexit.adapters.base import (  # noqa: I001
    ADAPTERS,
    EncoderAdapter,
    LayerListAdapter,
    LayerMask,
    check_backbone,
    make_adapter,
    padding_mask,
)
from gradsurg.multiexit.adapters.bert import BertAdapter
from gradsurg.multiexit.adapters.roberta import RobertaAdapter
from gradsurg.multiexit.adapters.albert import AlbertAdapter
from gradsurg.multiexit.adapters.mpnet import MPNetAdapter

__all__ = [
    "ADAPTERS",
    "AlbertAdapter",
    "BertAdapter",
    "EncoderAdapter",
    "LayerListAdapter",
    "LayerMask",
    "MPNetAdapter",
    "RobertaAdapter",
    "check_backbone",
    "make_adapter",
    "padding_mask",
]
