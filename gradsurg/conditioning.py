"""Conditioning a model on the preference ray, as COSMOS does (Ruchte & Grabocka 2021): one
network for the whole Pareto front, told each step which trade-off the loss asks for.

The ray r is a point of the simplex (k non-negative numbers summing to 1; a given ray is
scaled to sum 1). Training feeds the step's ray, `weighting.current_preference` of a `pbi` or
`cosmos` weighting with `resample: true`; inference feeds the trade-off the user wants, by
default the centre (1/k each, also the first training step's ray with the default
`preference`). Model-agnostic: `PreferenceConditioned(model, k)` concatenates r to the input
(the paper's way), or, with `at=` a submodule, adds a learned linear map of r to its output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradsurg.errors import ConfigError

__all__ = ["PreferenceConditioned", "PreferenceProjection", "centre", "check_ray", "parse_ray"]


def centre(k: int) -> Tensor:
    """The default ray: every objective weighs 1/k."""
    return torch.full((k,), 1.0 / k)


def check_ray(ray: object, groups: int | Sequence[str], *, where: str) -> Tensor:
    """`ray` as a float32 `[k]` tensor scaled to sum 1, or a one-line ConfigError naming
    `where`: k finite non-negative numbers, not all 0 (a sequence or a tensor)."""
    names = list(groups) if not isinstance(groups, int) else None
    k = len(names) if names is not None else int(groups)
    over = f", one per loss group {names}" if names is not None else ""
    allowed = f"allowed: {k} finite non-negative numbers, not all 0{over}"
    shown = ray.tolist() if isinstance(ray, Tensor) else ray
    try:
        values = torch.as_tensor(ray.detach().cpu() if isinstance(ray, Tensor) else ray,
                                 dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{where}: preference {shown!r} is invalid; {allowed}") from None
    if (values.shape != (k,) or not bool(torch.isfinite(values).all())
            or bool((values < 0).any()) or float(values.sum()) <= 0):
        raise ConfigError(f"{where}: preference {shown!r} is invalid; {allowed}")
    return (values / values.sum()).to(torch.float32)


def parse_ray(text: str, groups: int | Sequence[str], *, where: str) -> Tensor:
    """A ray written as comma-separated numbers (`0.2,0.8`), checked by `check_ray`."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = [math.nan]
    if any(not math.isfinite(value) for value in values):
        raise ConfigError(f"{where}: preference {text!r} is invalid; allowed: comma-separated "
                          "finite non-negative numbers, e.g. 0.3,0.7")
    return check_ray(values, groups, where=where)


class PreferenceProjection(nn.Module):
    """A learned linear map from the ray to a hidden size, added to a hidden state (every
    position alike). No bias: on the simplex W r + b = (W + b 1^T) r already."""

    def __init__(self, k: int, size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(k, size, bias=False)

    def forward(self, hidden: Tensor, ray: Tensor) -> Tensor:
        shift = self.linear(ray.to(device=hidden.device, dtype=self.linear.weight.dtype))
        return hidden + shift.to(hidden.dtype)


class PreferenceConditioned(nn.Module):
    """`model` conditioned on a preference ray over `k` objectives.

    - `at=None` (the paper's): the ray is concatenated to the last axis of the first input,
      so `model` must take `k` more input features;
    - `at="name"`: a learned `PreferenceProjection(k, size)` of the ray is added to the
      output of `model.get_submodule(name)` (a tensor whose last axis is `size`).

    `forward(x, ..., preference=r)` uses `r`, else the `preference` buffer (default the
    centre 1/k; `set_preference` changes it, e.g. to serve one trade-off). Both are checked
    and scaled to sum 1. The buffer is not saved (`persistent=False`): a reloaded model starts
    from the centre, not from the last training step's ray.
    """

    def __init__(self, model: nn.Module, k: int, *, at: str | None = None,
                 size: int | None = None) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ConfigError(f"PreferenceConditioned: k={k!r} is invalid; allowed: the "
                              "number of objectives, an int >= 2")
        if at is None and size is not None:
            raise ConfigError(f"PreferenceConditioned: size={size!r} sizes the projection "
                              "added at a submodule, and at=None concatenates the ray to the "
                              "input; pass at= too, or drop size")
        self.model = model
        self.k = k
        self.at = at
        self.register_buffer("preference", centre(k), persistent=False)
        self.projection: PreferenceProjection | None = None
        self._ray: Tensor | None = None
        if at is not None:
            try:
                target = model.get_submodule(at)
            except AttributeError:
                raise ConfigError(f"PreferenceConditioned: at={at!r} names no submodule of "
                                  "the model") from None
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(f"PreferenceConditioned: size={size!r} is invalid; "
                                  f"allowed: the size of {at!r}'s output's last axis, an "
                                  "int >= 1")
            self.projection = PreferenceProjection(k, size)
            self._hook = target.register_forward_hook(self._add_ray)

    def set_preference(self, preference: object) -> None:
        """The ray used when `forward` gets none (None: the centre)."""
        ray = centre(self.k) if preference is None else check_ray(
            preference, self.k, where="PreferenceConditioned")
        self.preference.copy_(ray)

    def forward(self, x: Tensor, *args: Any, preference: object = None, **kwargs: Any) -> Any:
        ray = check_ray(self.preference if preference is None else preference, self.k,
                        where="PreferenceConditioned").to(x.device)
        if self.projection is None:
            if not torch.is_floating_point(x):
                raise ConfigError("PreferenceConditioned: at=None concatenates the ray to the "
                                  f"input, which must be floating point, got {x.dtype}; use "
                                  "at= a submodule for token ids")
            x = torch.cat([x, ray.to(x.dtype).expand(*x.shape[:-1], self.k)], dim=-1)
            return self.model(x, *args, **kwargs)
        self._ray = ray
        try:
            return self.model(x, *args, **kwargs)
        finally:
            self._ray = None

    def _add_ray(self, module: nn.Module, inputs: Any, output: Any) -> Tensor:
        if self._ray is None:  # the inner model called directly would run unconditioned
            raise ConfigError(f"PreferenceConditioned: {self.at!r} ran without a preference "
                              "ray; call the PreferenceConditioned wrapper, not its model")
        assert self.projection is not None
        size = self.projection.linear.out_features
        if not isinstance(output, Tensor) or output.shape[-1:] != (size,):
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ConfigError(f"PreferenceConditioned: {self.at!r} returned {got}, and the "
                              f"ray's projection adds a last axis of size={size}")
        return self.projection(output, self._ray)
