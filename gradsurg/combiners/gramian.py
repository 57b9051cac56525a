"""Gramian and weighted row sums that stay finite over the whole float range.

Most combiners (project, PCGrad and the MGDA family) only need the k x k Gramian G G^T to pick
weights w, and then output w^T G. Both steps are one pass over the matrix when magnitudes are
ordinary. When they are not (rows of 1e-30 next to rows of 1e15 in float32, where squares
underflow or overflow), both fall back to float64 on rows rescaled by their largest entry,
processed in column chunks so no full-size float64 copy is made.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 1 << 20


def row_scales(matrix: Tensor) -> Tensor:
    """Largest absolute entry of each row, float64; 1 for all-zero rows (nothing to scale)."""
    if matrix.shape[1] == 0:
        return torch.ones(matrix.shape[0], dtype=torch.float64, device=matrix.device)
    scales = matrix.abs().amax(dim=1).to(torch.float64)
    return torch.where(scales > 0, scales, torch.ones_like(scales))


def gramian(matrix: Tensor) -> Tensor:
    """`matrix @ matrix.T` in float64, computed without overflow or underflow."""
    k, n = matrix.shape
    if n == 0:
        return torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    scales = row_scales(matrix)
    info = torch.finfo(matrix.dtype)
    smallest, largest = scales.min().item(), scales.max().item()
    if smallest >= (info.tiny**0.5) / info.eps and largest * largest * n <= info.max / 4:
        return (matrix @ matrix.T).to(torch.float64)
    scaled_gram = torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    for start in range(0, n, CHUNK):
        chunk = matrix[:, start : start + CHUNK].to(torch.float64) / scales[:, None]
        scaled_gram += chunk @ chunk.T
    return scaled_gram * scales[:, None] * scales[None, :]


def weighted_rows(weights: Tensor, matrix: Tensor) -> Tensor:
    """`weights @ matrix` for float64 `weights`, finite whenever the true result is."""
    k, n = matrix.shape
    out_dtype = matrix.dtype
    if n == 0:
        return torch.zeros(0, dtype=out_dtype, device=matrix.device)
    weights = weights.to(device=matrix.device, dtype=torch.float64)
    scales = row_scales(matrix)
    info = torch.finfo(out_dtype)
    active = weights != 0
    if not bool(active.any()):
        return torch.zeros(n, dtype=out_dtype, device=matrix.device)
    magnitude = (weights.abs() * scales)[active]
    plain_ok = (
        bool((weights.abs()[active] >= info.tiny).all())
        and bool((magnitude >= info.tiny / info.eps).all())
        and bool((magnitude <= info.max / (2 * k)).all())
    )
    if plain_ok:
        return weights.to(out_dtype) @ matrix
    coefficients = weights * scales  # weights on the rescaled rows, all of ordinary size
    out = torch.empty(n, dtype=out_dtype, device=matrix.device)
    for start in range(0, n, CHUNK):
        chunk = matrix[:, start : start + CHUNK].to(torch.float64) / scales[:, None]
        out[start : start + CHUNK] = (coefficients @ chunk).to(out_dtype)
    return out
