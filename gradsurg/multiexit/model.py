"""MultiExitModel: an encoder with one exit after every layer, plus its checkpoint format.

Checkpoint folder (everything needed for inference, no hub and no original backbone):

- ``model.safetensors``     all weights (encoder + exits), shared tensors stored once
- ``gradsurg_config.json``  :class:`MultiExitConfig`
- ``config.json``           the backbone's HF config (rebuilt with random init, then loaded)
- tokenizer files           when a tokenizer is passed to ``save_pretrained``
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradsurg import strict_json
from gradsurg.conditioning import PreferenceProjection, centre, check_ray
from gradsurg.errors import ConfigError, GradsurgError
from gradsurg.multiexit.adapters import EncoderAdapter, make_adapter
from gradsurg.multiexit.backbones import load_backbone
from gradsurg.multiexit.equilibrium import equilibrium_branches
from gradsurg.multiexit.exits import Exit, check_pooling
from gradsurg.multiexit.folders import (
    check_json_files,
    check_model_config,
    loading_errors,
    safetensors_parameters,
    vocabulary_fingerprint,
)
from gradsurg.outputs import atomic_write_text

__all__ = [
    "BACKBONE_CONFIG_FILE",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "MultiExitConfig",
    "MultiExitModel",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "gradsurg_config.json"
BACKBONE_CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


@dataclass(kw_only=True)
class MultiExitConfig:
    """What a multi-exit model needs beyond the backbone's own HF config.

    ``backbone`` is provenance only (reload uses the saved ``config.json``);
    ``num_labels == 1`` means regression; ``model_type`` is filled from the backbone.
    ``task`` and ``labels`` (class names) let ``gradsurg predict``/``eval`` name classes and
    pick the right number of input texts; they are optional for models built in code.
    ``gradient_equilibrium`` is a training rule (see :class:`MultiExitModel`), kept here so a
    reloaded model trains as it did; it changes no output.
    """

    num_labels: int
    backbone: str = "minilm"
    task: str | None = None
    labels: list[str] | None = None
    pooling: str = "cls"
    dropout: float = 0.1
    shared_exit: bool = False
    gradient_equilibrium: bool = False
    model_type: str | None = None
    attn_implementation: str | None = None
    #: SHA-256 of the saved tokenizer's vocabulary (`folders.vocabulary_fingerprint`), so a
    #: reload refuses another tokenizer; None for models saved without one or before it.
    tokenizer_vocabulary: str | None = None
    #: The loss groups of the preference ray the model is conditioned on (COSMOS; recipe key
    #: `preference_conditioning`), in order; None: not conditioned.
    preference_groups: list[str] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int):
            raise ConfigError(f"num_labels={self.num_labels!r} is invalid; allowed: an int >= 1")
        if self.num_labels < 1:
            raise ConfigError(f"num_labels={self.num_labels} is invalid; allowed: an int >= 1")
        check_pooling(self.pooling)
        if not isinstance(self.dropout, int | float) or not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout={self.dropout!r} is invalid; allowed: a float in [0, 1)")
        if not isinstance(self.shared_exit, bool):
            raise ConfigError(f"shared_exit={self.shared_exit!r} is invalid; allowed: true, false")
        if not isinstance(self.gradient_equilibrium, bool):
            raise ConfigError(f"gradient_equilibrium={self.gradient_equilibrium!r} is invalid; "
                              "allowed: true, false")
        if self.labels is not None and (
            not isinstance(self.labels, list) or len(self.labels) != self.num_labels
            or not all(isinstance(label, str) for label in self.labels)
        ):
            raise ConfigError(f"labels={self.labels!r} is invalid; allowed: a list of "
                              f"{self.num_labels} class names, or null")
        if self.preference_groups is not None and (
            not isinstance(self.preference_groups, list) or len(self.preference_groups) < 2
            or not all(isinstance(g, str) for g in self.preference_groups)
            or len(set(self.preference_groups)) != len(self.preference_groups)
        ):
            raise ConfigError(f"preference_groups={self.preference_groups!r} is invalid; "
                              "allowed: two or more distinct loss group names, or null")
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"format_version={self.format_version!r} is not supported; "
                f"allowed: {FORMAT_VERSION}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiExitConfig:
        """Build from parsed JSON; unknown or missing keys are a ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"multi-exit config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"multi-exit config key {unknown[0]!r} is unknown; "
                f"allowed: {', '.join(sorted(known))}"
            )
        if "num_labels" not in data:
            raise ConfigError("multi-exit config key 'num_labels' is missing; allowed: an int >= 1")
        return cls(**data)

    def to_json_file(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n",
                          own=True)

    @classmethod
    def from_json_file(cls, path: str | Path) -> MultiExitConfig:
        try:
            data = strict_json.load_file(path)  # bounded, strict; errors name the file
        except OSError as exc:
            raise GradsurgError(f"{path}: not a readable JSON file ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as error:  # name the file: the message alone does not say where
            raise ConfigError(f"{path}: {error}") from None


class MultiExitModel(nn.Module):
    """Encoder adapter + one :class:`Exit` per layer; returns every exit's logits.

    Build from a loaded HF backbone (``MultiExitModel(hf_model, config)``) or by name
    (:meth:`from_backbone`); reload a saved folder with :meth:`from_pretrained`.

    ``gradient_equilibrium`` (``MultiExitModel(hf, config, gradient_equilibrium=True)``, the
    config's field, or the attribute's setter): gradient equilibrium (GE) of Li et al., ICCV
    2019 ("Improved Techniques for Training Adaptive Deep Networks"). With L exits, layer i's
    output (1-based) feeds exit i and layer i+1; in the backward pass the gradient it gets from
    exit i is scaled by 1/(L-i+1) and the one from layer i+1 by (L-i)/(L-i+1), so layer i's
    parameters receive the *mean* of the gradients of the L-i+1 exits that reach them (the
    embeddings: the mean over all L) instead of their sum. The forward pass is unchanged (an
    identity per branch), the exits' own gradients too; it costs two scalings of each layer's
    output gradient, one backward pass as before, so any loss, combiner, weighting or
    DDP/FSDP2 applies unchanged. It acts only where gradients are recorded (not under
    ``torch.no_grad``).
    """

    def __init__(self, backbone: nn.Module, config: MultiExitConfig, *,
                 gradient_equilibrium: bool | None = None) -> None:
        super().__init__()
        encoder: EncoderAdapter = make_adapter(backbone)
        if config.model_type is not None and config.model_type != encoder.model_type:
            raise ConfigError(
                f"model_type={config.model_type!r} does not match the backbone; "
                f"allowed: {encoder.model_type!r}"
            )
        changes: dict[str, Any] = {"model_type": encoder.model_type}
        if gradient_equilibrium is not None:  # None: the config's own
            changes["gradient_equilibrium"] = gradient_equilibrium
        self.config = dataclasses.replace(config, **changes)
        self.encoder = encoder
        heads = [
            Exit(encoder.hidden_size, config.num_labels, pooling=config.pooling,
                 dropout=config.dropout)
            for _ in range(1 if config.shared_exit else encoder.num_layers)
        ]
        # A shared exit (ELBERT) is one module listed after every layer: its parameters exist
        # once (`parameters()` and safetensors both store shared tensors once).
        self.exits = nn.ModuleList(heads * encoder.num_layers if config.shared_exit else heads)
        self._init_exits(float(getattr(encoder.hf_config, "initializer_range", 0.02)))
        #: COSMOS conditioning: the ray's learned map added to the embeddings' output.
        self.preference_projection: PreferenceProjection | None = None
        if config.preference_groups is not None:
            self._add_preference_projection(len(config.preference_groups))

    def condition_on_preference(self, groups: list[str]) -> None:
        """Condition the model on a preference ray over `groups` (COSMOS): a learned linear
        map from the ray to the hidden size, added to the embeddings' output at every
        position. Saved with the model (`preference_groups` in its config)."""
        if self.preference_projection is not None:
            raise ConfigError("the model is already conditioned on a preference ray over "
                              f"{self.config.preference_groups}")
        self.config = dataclasses.replace(self.config, preference_groups=list(groups))
        self._add_preference_projection(len(groups))

    def _add_preference_projection(self, k: int) -> None:
        self.preference_projection = PreferenceProjection(k, self.encoder.hidden_size)
        std = float(getattr(self.encoder.hf_config, "initializer_range", 0.02))
        nn.init.normal_(self.preference_projection.linear.weight, mean=0.0, std=std)
        # Not saved: a reloaded model starts from the centre, whatever ray training ended on.
        self.register_buffer("preference", centre(k), persistent=False)

    def set_preference(self, preference: object, *, where: str = "preference") -> None:
        """The ray a conditioned model answers for (None: the centre, 1/k each); refused for a
        model trained without conditioning, where it would change nothing."""
        groups = self.config.preference_groups
        if groups is None:
            raise ConfigError(f"{where}: the model was trained without preference "
                              "conditioning, so a preference would change nothing")
        ray = centre(len(groups)) if preference is None else check_ray(preference, groups,
                                                                       where=where)
        self.preference.copy_(ray)

    def embed(self, input_ids: Tensor, attention_mask: Tensor,
              token_type_ids: Tensor | None = None) -> Tensor:
        """The encoder's embeddings, plus the preference ray's projection when conditioned."""
        hidden = self.encoder.embed(input_ids, attention_mask, token_type_ids)
        if self.preference_projection is not None:
            hidden = self.preference_projection(hidden, self.preference)
        return hidden

    def _init_exits(self, std: float) -> None:
        # Same scale as the backbone's own heads, so new exits do not dominate early steps.
        for module in self.exits.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def gradient_equilibrium(self) -> bool:
        """Whether the backward pass balances the exits' gradients (see the class)."""
        return self.config.gradient_equilibrium

    @gradient_equilibrium.setter
    def gradient_equilibrium(self, on: bool) -> None:
        self.config = dataclasses.replace(self.config, gradient_equilibrium=on)  # validated

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> list[Tensor]:
        """Per-exit logits [B, num_labels]: index 0 after layer 1, the last after the top layer."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.embed(input_ids, attention_mask, token_type_ids)
        mask = self.encoder.prepare_mask(attention_mask, hidden)
        logits: list[Tensor] = []
        for i, exit_head in enumerate(self.exits):
            hidden = self.encoder.run_layer(i, hidden, mask)
            to_exit = hidden
            if self.config.gradient_equilibrium:
                to_exit, hidden = equilibrium_branches(hidden, i, self.num_exits)
            logits.append(exit_head(to_exit, mask.padding))
        return logits

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        *,
        num_labels: int,
        pooling: str = "cls",
        dropout: float = 0.1,
        attn_implementation: str | None = None,
        backbone_dropout: float | None = None,
        shared_exit: bool = False,
        gradient_equilibrium: bool = False,
    ) -> tuple[MultiExitModel, Any]:
        """Pretrained backbone by name (``"minilm"``, HF id, folder) -> ``(model, tokenizer)``.

        ``backbone_dropout`` overrides the backbone's hidden and attention dropout;
        ``shared_exit`` puts one exit after every layer (ELBERT) instead of one per layer;
        ``gradient_equilibrium``: see the class.
        """
        config = MultiExitConfig(
            num_labels=num_labels,
            backbone=name_or_path,
            pooling=pooling,
            dropout=dropout,
            shared_exit=shared_exit,
            gradient_equilibrium=gradient_equilibrium,
            attn_implementation=attn_implementation,
        )
        hf_model, tokenizer = load_backbone(name_or_path, attn_implementation=attn_implementation,
                                            dropout=backbone_dropout)
        return cls(hf_model, config), tokenizer

    # -- checkpoints --------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, *, tokenizer: Any | None = None) -> Path:
        """Write weights, both configs and (optionally) the tokenizer into ``directory``."""
        from safetensors.torch import save_model

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        # save_model (not save_file) drops aliases of shared tensors, e.g. ALBERT's layer group.
        save_model(self, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:  # recorded, so a reload refuses another tokenizer
            self.config = dataclasses.replace(
                self.config, tokenizer_vocabulary=vocabulary_fingerprint(tokenizer))
        self.config.to_json_file(out / CONFIG_FILE)
        self.encoder.hf_config.to_json_file(str(out / BACKBONE_CONFIG_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        return out

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        attn_implementation: str | None = None,
        device: str | torch.device = "cpu",
    ) -> MultiExitModel:
        """Rebuild a saved model for inference from its folder alone (eval mode).

        ``attn_implementation`` overrides the saved choice, e.g. to reload on a machine
        without the kernel it was trained with.
        """
        from transformers import AutoConfig, AutoModel

        folder = Path(directory)
        if not folder.is_dir():
            raise ConfigError(
                f"checkpoint folder {str(folder)!r} does not exist or is not a folder"
            )
        for name in (CONFIG_FILE, BACKBONE_CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise ConfigError(
                    f"checkpoint folder {str(folder)!r} has no {name}; "
                    "allowed: a folder written by MultiExitModel.save_pretrained"
                )
        check_json_files(folder)  # every JSON file strict and bounded, named if not
        config = MultiExitConfig.from_json_file(folder / CONFIG_FILE)
        try:
            hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            if loading_errors(exc, folder) is None:
                raise
            raise GradsurgError(
                f"{folder / BACKBONE_CONFIG_FILE}: not a usable HF config ({_first_line(exc)})"
            ) from None
        check_model_config(hf_config, folder / BACKBONE_CONFIG_FILE,
                           weights=safetensors_parameters(folder / WEIGHTS_FILE))
        if config.model_type is not None and hf_config.model_type != config.model_type:
            raise GradsurgError(
                f"checkpoint {str(folder)!r}: {BACKBONE_CONFIG_FILE} has model_type "
                f"{hf_config.model_type!r} but {CONFIG_FILE} says {config.model_type!r}"
            )
        attn = attn_implementation or config.attn_implementation
        kwargs = {} if attn is None else {"attn_implementation": attn}
        try:
            hf_model = AutoModel.from_config(hf_config, **kwargs)
        except Exception as exc:
            if loading_errors(exc, folder) is None:
                raise
            raise GradsurgError(f"{folder / BACKBONE_CONFIG_FILE}: describes no model that "
                                f"can be built ({_first_line(exc)})") from None
        model = cls(hf_model, config)
        _load_weights(model, folder / WEIGHTS_FILE, device=str(device))
        return model.to(device).eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_weights(model: nn.Module, path: Path, *, device: str) -> None:
    """Load ``path`` into ``model``, turning every mismatch into one readable line."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise GradsurgError(f"{path}: unreadable safetensors file ({_first_line(exc)})") from exc
    expected = model.state_dict()
    for key, shape in shapes.items():
        if key in expected and tuple(expected[key].shape) != shape:
            raise GradsurgError(
                f"{path}: tensor {key!r} has shape {list(shape)} but the config builds "
                f"{list(expected[key].shape)}; the weights do not match the saved configs"
            )
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=device)
    except Exception as exc:
        raise GradsurgError(f"{path}: could not load weights ({_first_line(exc)})") from exc
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_sample(missing)}")
        if unexpected:
            parts.append(f"unexpected {_sample(unexpected)}")
        raise GradsurgError(f"{path}: weights do not match the saved configs ({'; '.join(parts)})")


def _sample(names: Any, limit: int = 3) -> str:
    names = sorted(names)
    head = ", ".join(names[:limit])
    return f"{head} (+{len(names) - limit} more)" if len(names) > limit else head
