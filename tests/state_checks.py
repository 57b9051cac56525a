"""Checkpointed state for the tests: a state dict through the file format gradsurg's
checkpoints use, read back the safe way (`torch.load(weights_only=True)`: tensors and plain
values only, no pickled objects), so a state that needs pickle fails here."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch


def through_a_weights_only_checkpoint(state: Mapping[str, Any]) -> dict[str, Any]:
    """`state` saved with torch.save and loaded back with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
