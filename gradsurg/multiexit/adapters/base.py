"""Adapters: one small interface over the layer stacks of Hugging Face encoders.

An early-exit runner must stop after any layer and may drop finished rows between
layers, so it cannot call the HF model's ``forward`` (which runs every layer). Each
adapter exposes the three pieces it needs — embeddings, one layer at a time, and the
attention mask in the form that layer expects — and nothing else.

:class:`EncoderAdapter` is that interface. :class:`LayerListAdapter` implements it for the
common shape (an embedding module and a list of layers called as ``layer(hidden, mask)``), so
an architecture module (``bert.py``, ``roberta.py``, ``mpnet.py``, ``albert.py``) states only
what differs. Each registers with bare ``@ADAPTERS.register`` under its ``model_type`` (the
HF ``config.model_type``); other packages add architectures through the ``gradsurg.adapters``
entry point group (name = the ``model_type``, object = the adapter class).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from gradsurg.errors import ConfigError
from gradsurg.registry import Registry

__all__ = [
    "ADAPTERS",
    "EncoderAdapter",
    "LayerListAdapter",
    "LayerMask",
    "check_backbone",
    "make_adapter",
    "padding_mask",
]


@dataclass(frozen=True)
class LayerMask:
    """An attention mask ready for one backbone's layers, plus the padding mask it came from.

    ``value`` is whatever the HF layer wants for the configured attention implementation
    (an additive float mask for eager, a boolean mask or ``None`` for sdpa, ...), so it is
    opaque to callers. ``padding`` ([B, T], 1 = real token) is kept because exits need it
    for mean pooling and because a runner that drops rows re-prepares the mask from it
    (some forms, e.g. flex-attention block masks, cannot be row-sliced).
    """

    padding: Tensor
    value: Any


class EncoderAdapter(nn.Module, ABC):
    """Layer-by-layer access to an encoder; owns exactly the modules it runs.

    Subclasses set ``model_type`` (the HF ``config.model_type`` they handle).
    """

    model_type: ClassVar[str]

    def __init__(self, hf_config: Any) -> None:
        super().__init__()
        # Plain attribute, not a module: layers read the attention implementation from it.
        self.hf_config = hf_config

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Number of transformer layers (= number of possible exits)."""

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states ``run_layer`` returns."""
        return int(self.hf_config.hidden_size)

    @property
    def attn_implementation(self) -> str:
        """Attention kernel the layers dispatch to (``eager``, ``sdpa``, ...)."""
        return str(getattr(self.hf_config, "_attn_implementation", None) or "eager")

    @abstractmethod
    def embed(self, input_ids: Tensor, attention_mask: Tensor,
              token_type_ids: Tensor | None = None) -> Tensor:
        """Token ids [B, T] -> hidden states [B, T, H] fed to layer 0."""

    @abstractmethod
    def prepare_mask(self, attention_mask: Tensor, hidden: Tensor) -> LayerMask:
        """Turn a padding mask [B, T] (1 = token, 0 = pad) into what the layers expect."""

    @abstractmethod
    def _layer_forward(self, index: int, hidden: Tensor, mask_value: Any) -> Tensor:
        """Run layer ``index`` with an already-prepared mask value."""

    def run_layer(self, index: int, hidden: Tensor, attention_mask: LayerMask | Tensor) -> Tensor:
        """Run layer ``index`` (0-based) alone: hidden [B, T, H] -> [B, T, H].

        ``attention_mask`` is a :class:`LayerMask` from :meth:`prepare_mask` (prepare once,
        reuse for every layer) or a raw [B, T] padding mask, prepared here on the fly. The
        raw form is accepted on purpose: passing a 2-D mask straight to sdpa would broadcast
        it along the wrong axis and corrupt results silently.
        """
        if not 0 <= index < self.num_layers:
            raise ConfigError(
                f"layer index {index} is out of range; allowed: 0..{self.num_layers - 1}"
            )
        if not isinstance(attention_mask, LayerMask):
            attention_mask = self.prepare_mask(attention_mask, hidden)
        return self._layer_forward(index, hidden, attention_mask.value)

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                token_type_ids: Tensor | None = None) -> Tensor:
        """All layers in order; the last hidden state [B, T, H] (used for checks)."""
        hidden = self.embed(input_ids, attention_mask, token_type_ids)
        mask = self.prepare_mask(attention_mask, hidden)
        for i in range(self.num_layers):
            hidden = self.run_layer(i, hidden, mask)
        return hidden


ADAPTERS: Registry[type[EncoderAdapter]] = Registry(
    "backbone adapter", "gradsurg.adapters", key="model_type")
"""Adapter classes by the HF ``config.model_type`` they handle."""


def check_backbone(
    hf_model: nn.Module, *, class_name: str, model_type: str, modules: tuple[str, ...]
) -> Any:
    """The backbone's HF config, after checking it is the bare encoder an adapter expects.

    ``modules`` are dotted attribute paths the adapter takes over (``"encoder.layer"``). A
    wrong class, a mismatched ``config.model_type`` or a decoder config is a one-line
    :class:`ConfigError`.
    """
    config = getattr(hf_model, "config", None)
    if getattr(config, "model_type", None) != model_type or not all(
        isinstance(_attribute(hf_model, path), nn.Module) for path in modules
    ):
        raise ConfigError(
            f"backbone {type(hf_model).__name__} is not a transformers {class_name}; allowed: "
            f"the bare encoder (AutoModel of a model_type {model_type!r} checkpoint)"
        )
    if getattr(config, "is_decoder", False):
        raise ConfigError("backbone config is_decoder=True; allowed: an encoder (False)")
    return config


def _attribute(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def padding_mask(adapter: EncoderAdapter, attention_mask: Tensor, hidden: Tensor) -> LayerMask:
    """The bidirectional mask HF encoders build in ``forward``, for ``adapter``'s config.

    Same helper the HF models call, so every attention implementation gets the form it
    expects: eager an additive [B,1,T,T] float mask (dtype-min on pads), sdpa a boolean
    [B,1,T,T] mask or None when nothing is padded, flash a 2-D mask or None, flex a BlockMask.
    """
    from transformers.masking_utils import create_bidirectional_mask

    if attention_mask.dim() != 2 or attention_mask.shape != hidden.shape[:2]:
        raise ConfigError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match the batch; "
            f"allowed: [B, T] = {tuple(hidden.shape[:2])}"
        )
    padding = attention_mask.to(device=hidden.device)
    value = create_bidirectional_mask(
        config=adapter.hf_config, inputs_embeds=hidden, attention_mask=padding
    )
    return LayerMask(padding=padding, value=value)


def first_output(out: Any) -> Tensor:
    """A layer's hidden states: some HF layers return a tuple, newer ones the tensor."""
    return out[0] if isinstance(out, tuple) else out


class LayerListAdapter(EncoderAdapter):
    """An encoder that is an embedding module plus a list of layers, each called as
    ``layer(hidden, mask)`` with the bidirectional padding mask (BERT's shape).

    A subclass names its HF class and the modules it takes over: ``parts`` maps the
    attribute here to the dotted path in the HF model and must provide ``embeddings`` and
    ``layers``. Only those modules are kept: the HF pooler is not used (each exit has its
    own), and keeping it would give parameters that never receive gradients (DDP complains)
    and bloat checkpoints. The order of ``parts`` is the order of ``parameters()``.
    """

    class_name: ClassVar[str]
    parts: ClassVar[Mapping[str, str]] = {"embeddings": "embeddings", "layers": "encoder.layer"}
    segment_embeddings: ClassVar[bool] = True
    """Whether the embedding module takes ``token_type_ids`` (MPNet's does not)."""
    embeddings: nn.Module
    layers: nn.ModuleList

    def __init__(self, hf_model: nn.Module) -> None:
        config = check_backbone(hf_model, class_name=self.class_name,
                                model_type=self.model_type, modules=tuple(self.parts.values()))
        super().__init__(config)
        for attribute, path in self.parts.items():
            setattr(self, attribute, _attribute(hf_model, path))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, input_ids: Tensor, attention_mask: Tensor,
              token_type_ids: Tensor | None = None) -> Tensor:
        # The model's own embedding module, called as its forward calls it: positions are
        # absolute (BERT from 0; RoBERTa and MPNet from the token ids), so the padding mask
        # plays no part here.
        if self.segment_embeddings:
            return self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return self.embeddings(input_ids=input_ids)

    def prepare_mask(self, attention_mask: Tensor, hidden: Tensor) -> LayerMask:
        return padding_mask(self, attention_mask, hidden)

    def layer(self, index: int) -> nn.Module:
        """The module that runs layer ``index`` (ALBERT reuses one per group of layers)."""
        return self.layers[index]

    def _layer_forward(self, index: int, hidden: Tensor, mask_value: Any) -> Tensor:
        return first_output(self.layer(index)(hidden, mask_value))


def make_adapter(hf_model: nn.Module) -> EncoderAdapter:
    """Pick the registered adapter by the backbone's ``config.model_type``."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if str(model_type) not in ADAPTERS:
        allowed = ", ".join(entry.name for entry in ADAPTERS.entries())  # bert first
        raise ConfigError(
            f"model_type {model_type!r} has no multi-exit adapter; allowed: {allowed}"
        )
    factory: Callable[[nn.Module], EncoderAdapter] = ADAPTERS.get(str(model_type))
    return factory(hf_model)
