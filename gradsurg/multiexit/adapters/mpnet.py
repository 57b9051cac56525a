"""MPNet adapter: BERT-like layers plus a relative position bias shared by all of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from gradsurg.errors import ConfigError
from gradsurg.multiexit.adapters.base import (
    ADAPTERS,
    LayerListAdapter,
    LayerMask,
    first_output,
    padding_mask,
)

__all__ = ["MPNetAdapter", "MPNetMask"]

#: ``MPNetEncoder.forward`` calls ``compute_position_bias`` with its default of 32 buckets
#: whatever ``config.relative_attention_num_buckets`` says; kept for identical outputs.
_NUM_BUCKETS = 32


class MPNetMask(NamedTuple):
    """What every MPNet layer takes besides the hidden states (``LayerMask.value``)."""

    attention: Tensor | None  # additive [B, 1, T, T] (eager is MPNet's only kernel)
    position_bias: Tensor  # [1, heads, T, T], broadcast over the batch


@ADAPTERS.register
class MPNetAdapter(LayerListAdapter):
    """Adapter for ``transformers.MPNetModel``.

    ``MPNetEncoder`` computes a relative position bias from the sequence length once and
    passes it to every layer. Here :meth:`prepare_mask` computes it with the padding mask,
    from the current ``hidden`` length, so a mask re-prepared after rows leave or trailing
    pad columns are cut carries a bias of the right shape (relative offsets between the
    remaining tokens are unchanged, so its values are the same). It is built for one row and
    broadcast, which adds the same numbers as HF's batch-expanded copy.

    Absolute positions come from the token ids (MPNet's embedding treats id 1 as padding),
    exactly as ``MPNetModel.forward`` computes them. MPNet has no segment embeddings:
    ``token_type_ids`` are ignored, as ``MPNetModel`` has no such input.
    """

    model_type = "mpnet"
    class_name = "MPNetModel"
    parts: ClassVar[Mapping[str, str]] = {
        "embeddings": "embeddings", "layers": "encoder.layer",
        "relative_attention_bias": "encoder.relative_attention_bias"}
    segment_embeddings = False
    relative_attention_bias: nn.Embedding

    def __init__(self, hf_model: Any) -> None:
        super().__init__(hf_model)
        if self.attn_implementation != "eager":
            raise ConfigError(
                f"MPNet attn_implementation={self.attn_implementation!r} is not supported; "
                "allowed: eager"
            )

    def position_bias(self, length: int) -> Tensor:
        """Relative position bias [1, heads, T, T] for a sequence of ``length`` tokens."""
        from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

        device = self.relative_attention_bias.weight.device
        positions = torch.arange(length, dtype=torch.long, device=device)
        relative = positions[None, :] - positions[:, None]  # memory - context, as in HF
        buckets = MPNetEncoder.relative_position_bucket(relative, num_buckets=_NUM_BUCKETS)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def prepare_mask(self, attention_mask: Tensor, hidden: Tensor) -> LayerMask:
        mask = padding_mask(self, attention_mask, hidden)
        bias = self.position_bias(hidden.shape[1])
        return LayerMask(padding=mask.padding, value=MPNetMask(mask.value, bias))

    def _layer_forward(self, index: int, hidden: Tensor, mask_value: Any) -> Tensor:
        return first_output(
            self.layer(index)(hidden, mask_value.attention, mask_value.position_bias))
