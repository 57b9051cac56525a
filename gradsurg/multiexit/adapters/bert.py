"""BERT adapter: the layer-list shape as it is (covers the packaged MiniLM)."""

from __future__ import annotations

from gradsurg.multiexit.adapters.base import ADAPTERS, LayerListAdapter

__all__ = ["BertAdapter"]


@ADAPTERS.register
class BertAdapter(LayerListAdapter):
    """Adapter for ``transformers.BertModel`` (any depth): ``embeddings`` + ``encoder.layer``,
    positions absolute from 0, segment embeddings from ``token_type_ids``."""

    model_type = "bert"
    class_name = "BertModel"
