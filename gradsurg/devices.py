"""Device names from recipes and the command line -> torch devices, with clear errors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from gradsurg.errors import ConfigError


def resolve_device(name: str = "auto", *, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present (``cuda:LOCAL_RANK`` under torchrun); an unknown or
    unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; allowed: auto, cpu, "
                          "cuda, cuda:N, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)  # each torchrun process its own GPU
    return device


def to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """A batch of named tensors moved to ``device`` (training, evaluation and serving)."""
    return {name: tensor.to(device) for name, tensor in batch.items()}
