"""ALBERT adapter: one exit after each application of a shared layer group."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from gradsurg.multiexit.adapters.base import ADAPTERS, LayerListAdapter

__all__ = ["AlbertAdapter"]


@ADAPTERS.register
class AlbertAdapter(LayerListAdapter):
    """Adapter for ``transformers.AlbertModel``.

    ALBERT embeds into ``embedding_size`` and projects to ``hidden_size`` before the first
    layer; :meth:`embed` returns the projected states. Its encoder applies
    ``config.num_hidden_layers`` times one of ``num_hidden_groups`` shared layer groups (each
    ``inner_group_num`` ALBERT layers deep), layer ``i`` using group
    ``int(i / (num_hidden_layers / num_hidden_groups))`` as ``AlbertTransformer`` does. Layer
    ``i`` here is one application of its group, so there are ``num_hidden_layers`` exits
    (with ``inner_group_num > 1`` an exit sees the group's last inner layer only).

    ``layers`` holds each group once (shared weights, stored once); surgery patterns such as
    ``encoder.layers.*`` select them. Positions are absolute from 0 and the mask is BERT's.
    """

    model_type = "albert"
    class_name = "AlbertModel"
    parts: ClassVar[Mapping[str, str]] = {"embeddings": "embeddings",
                                          "projection": "encoder.embedding_hidden_mapping_in",
                                          "layers": "encoder.albert_layer_groups"}
    projection: nn.Module

    def __init__(self, hf_model: Any) -> None:
        super().__init__(hf_model)
        depth = int(self.hf_config.num_hidden_layers)
        groups = int(self.hf_config.num_hidden_groups)
        # Same float arithmetic as AlbertTransformer.forward.
        self.group_of_layer = tuple(int(i / (depth / groups)) for i in range(depth))

    @property
    def num_layers(self) -> int:
        return len(self.group_of_layer)

    def embed(self, input_ids: Tensor, attention_mask: Tensor,
              token_type_ids: Tensor | None = None) -> Tensor:
        return self.projection(super().embed(input_ids, attention_mask, token_type_ids))

    def layer(self, index: int) -> nn.Module:
        return self.layers[self.group_of_layer[index]]
