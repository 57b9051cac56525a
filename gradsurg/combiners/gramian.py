"""Gramian and weighted row sums that stay finite over the whole float range.

Most combiners (project, PCGrad and the MGDA family) only need the k x k Gramian G G^T to pick
weights w, and then output w^T G. Both are one pass over the matrix in its own dtype when the
magnitudes are ordinary, which is checked from the result itself (no extra pass). Otherwise
(rows of 1e-30 next to rows of 1e15 in float32, where squares underflow or overflow) both fall
back to float64 on rows rescaled by their largest entry, in column chunks, so no full-size
float64 copy is ever made.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 1 << 20


def rank_tolerance(k: int, dtype: torch.dtype) -> float:
    """Relative eigenvalue cut below which a k x k Gramian of rows held in `dtype` is rank
    deficient: 32 k eps (the Gramian carries the rows' rounding even when held in float64)."""
    return 32 * k * torch.finfo(dtype).eps


def row_scales(matrix: Tensor) -> Tensor:
    """Largest absolute entry of each row, float64; 1 for all-zero rows (nothing to scale)."""
    if matrix.shape[1] == 0:
        return torch.ones(matrix.shape[0], dtype=torch.float64, device=matrix.device)
    low, high = torch.aminmax(matrix, dim=1)  # one pass, no |matrix| temporary
    scales = torch.maximum(low.abs(), high.abs()).to(torch.float64)
    return torch.where(scales > 0, scales, torch.ones_like(scales))


def gramian(matrix: Tensor) -> Tensor:
    """`matrix @ matrix.T` in float64, computed without overflow or underflow."""
    k, n = matrix.shape
    if n == 0:
        return torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    fast = (matrix @ matrix.T).to(torch.float64)
    if _gramian_is_trustworthy(fast, matrix):
        return fast
    scales = row_scales(matrix)
    scaled_gram = torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    for start in range(0, n, CHUNK):
        chunk = matrix[:, start : start + CHUNK].to(torch.float64) / scales[:, None]
        scaled_gram += chunk @ chunk.T
    return scaled_gram * scales[:, None] * scales[None, :]


def _gramian_is_trustworthy(gram: Tensor, matrix: Tensor) -> bool:
    """True when no product in `matrix @ matrix.T` can have overflowed or lost precision.

    Overflow leaves an inf or nan. Underflow matters only if a row's largest squares were
    near the bottom of the range; a squared norm of at least n * tiny / eps^2 rules that out.
    A zero squared norm is trusted only for a row that is really all zeros.
    """
    info = torch.finfo(matrix.dtype)
    if not bool(torch.isfinite(gram).all()) or bool((gram.abs() > info.max / 4).any()):
        return False
    diagonal = gram.diagonal()
    floor = matrix.shape[1] * info.tiny / info.eps**2
    for i, value in enumerate(diagonal.tolist()):
        if value < floor and (value != 0.0 or bool(matrix[i].any())):
            return False
    return True


def weighted_rows(weights: Tensor, matrix: Tensor, gram: Tensor | None = None) -> Tensor:
    """`weights @ matrix` for float64 `weights`, finite whenever the true result is.

    `gram` (the float64 Gramian, if the caller has it) lets the common case skip a pass
    over the matrix: row norms bound every product w_j * g_j.
    """
    k, n = matrix.shape
    out_dtype = matrix.dtype
    if n == 0:
        return torch.zeros(0, dtype=out_dtype, device=matrix.device)
    weights = weights.to(device=matrix.device, dtype=torch.float64)
    if not bool((weights != 0).any()):
        return torch.zeros(n, dtype=out_dtype, device=matrix.device)
    norms = gram.diagonal().clamp_min(0).sqrt() if gram is not None else None
    if norms is not None and _plain_product_is_safe(weights, norms, n, out_dtype):
        # k fused multiply-adds: several times faster on CPUs than a [1, k] @ [k, n] product
        out = torch.mul(matrix[0], weights[0].item())
        for j in range(1, k):
            if weights[j] != 0:
                out.add_(matrix[j], alpha=weights[j].item())
        return out
    scales = row_scales(matrix)
    coefficients = weights * scales  # weights on the rescaled rows, all of ordinary size
    out = torch.empty(n, dtype=out_dtype, device=matrix.device)
    for start in range(0, n, CHUNK):
        chunk = matrix[:, start : start + CHUNK].to(torch.float64) / scales[:, None]
        out[start : start + CHUNK] = (coefficients @ chunk).to(out_dtype)
    return out


def _plain_product_is_safe(weights: Tensor, norms: Tensor, n: int, dtype: torch.dtype) -> bool:
    """Each w_j is representable and w_j * g_j neither overflows nor sinks into subnormals.

    The largest entry of g_j lies between ||g_j|| / sqrt(n) and ||g_j||.
    """
    info = torch.finfo(dtype)
    active = (weights != 0) & (norms > 0)
    if not bool(active.any()):
        return True
    w, size = weights.abs()[active], (weights.abs() * norms)[active]
    k = weights.numel()
    return (
        bool((w >= info.tiny).all())
        and bool((w <= info.max).all())
        and bool((size >= n**0.5 * info.tiny / info.eps).all())
        and bool((size <= info.max / (2 * k)).all())
    )
