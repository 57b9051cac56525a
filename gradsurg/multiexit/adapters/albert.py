"""ALBERT adapter: one exit after each application of a shared layer group."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from gradsurg.multiexit.adapters import (
    EncoderAdapter,
    LayerMask,
    check_backbone,
    first_output,
    padding_mask,
    register_adapter,
)

__all__ = ["AlbertAdapter"]


@register_adapter
class AlbertAdapter(EncoderAdapter):
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

    def __init__(self, hf_model: Any) -> None:
        config = check_backbone(
            hf_model,
            class_name="AlbertModel",
            model_type=self.model_type,
            modules=(
                "embeddings",
                "encoder.embedding_hidden_mapping_in",
                "encoder.albert_layer_groups",
            ),
        )
        super().__init__(config)
        self.embeddings = hf_model.embeddings
        self.projection = hf_model.encoder.embedding_hidden_mapping_in
        self.layers = hf_model.encoder.albert_layer_groups
        depth, groups = int(config.num_hidden_layers), int(config.num_hidden_groups)
        # Same float arithmetic as AlbertTransformer.forward.
        self.group_of_layer = tuple(int(i / (depth / groups)) for i in range(depth))

    @property
    def num_layers(self) -> int:
        return len(self.group_of_layer)

    def embed(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        embedded = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return self.projection(embedded)

    def prepare_mask(self, attention_mask: Tensor, hidden: Tensor) -> LayerMask:
        return padding_mask(self, attention_mask, hidden)

    def _layer_forward(self, index: int, hidden: Tensor, mask_value: Any) -> Tensor:
        return first_output(self.layers[self.group_of_layer[index]](hidden, mask_value))
