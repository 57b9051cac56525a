"""`imtlg`: the gradient part of impartial multi-task learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, DtypeAwareWeighting
from gradsurg.combiners.gramian import rank_tolerance
from gradsurg.combiners.qp import cosine_matrix


@COMBINERS.register
class IMTLG(DtypeAwareWeighting):
    """Weights making the combined gradient's projection onto every unit group direction equal.

        u_i = g_i / ||g_i||,   find alpha with  g . u_1 = ... = g . u_k  for g = sum_i alpha_i g_i
        <=> G alpha = c * (||g_1||, ..., ||g_k||)   (G the Gramian, c the common projection)
        <=> N v = c * 1  with N the cosine matrix, v_i = alpha_i ||g_i||

    Liu et al., "Towards Impartial Multi-task Learning" (ICLR 2021), IMTL-G, whose closed form
    alpha_{2:k} = g_1 U^T (D U^T)^-1 is the same solution with sum(alpha) = 1. Here
    v = pinv(N) 1, dropping eigenvalues of N below 32 k eps times the largest (eps of the
    input's dtype: the Gramian carries its rounding), which also covers what the closed form
    cannot:
      * zero rows have no direction; they get weight 0 and constrain nothing;
      * linearly dependent rows make N singular; the pseudo-inverse gives the least-squares
        solution (the generalization of Quinton & Rey, "Jacobian Descent", 2024);
      * if no non-zero solution exists (e.g. two opposite rows, where equal projections force
        g = 0) the output is 0.

    Scaling: the paper normalizes sum(alpha) = 1 (the scale of `mean`). Here the weights are
    k * alpha / sum(|alpha|) with alpha = v / ||g||: the same as k times the paper's whenever
    every alpha_i >= 0 (so identical rows give their plain `sum`), but the common projection
    stays positive and the scale finite when sum(alpha) crosses 0, where the paper's
    normalization would divide by 0 or turn the step against every group. With linearly
    independent rows the output therefore conflicts with no group. The direction is invariant
    to rescaling any row by a positive factor ("impartial").
    """

    name = "imtlg"

    def weights_for(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, dict[str, float]]:
        # the Gramian carries the rounding of the input's dtype: eigenvalues below it are noise
        return imtlg_weights(gram, rtol=rank_tolerance(gram.shape[0], dtype))


def imtlg_weights(gram: Tensor, *, rtol: float) -> tuple[Tensor, dict[str, float]]:
    """IMTL-G's float64 weights from the Gramian; see `IMTLG`."""
    norms, _cosines, v, rank = equal_projection_solution(gram, rtol=rtol)
    k = norms.numel()
    weights = torch.zeros(k, dtype=torch.float64)
    info = {"imtlg/rank": float(rank), "imtlg/negative_weights": 0.0}
    nonzero = norms > 0
    alpha = v[nonzero] / norms[nonzero]
    size = float(alpha.abs().sum())
    if size > 0 and bool(torch.isfinite(alpha).all()):
        # the projections onto the u_j are (N v)_j * k / size, and N v is the
        # projection of the all-ones vector onto the range of N: never all negative
        weights[nonzero] = k * alpha / size
        info["imtlg/negative_weights"] = float((weights < 0).sum())
    return weights.to(gram.device), info


def equal_projection_solution(gram: Tensor, *, rtol: float) -> tuple[Tensor, Tensor, Tensor, int]:
    """Row norms d, cosine matrix N, v = pinv(N) 1 on the non-zero rows (0 on zero rows), and
    the rank kept: sum_i v_i u_i is the shortest vector with equal projections on every unit
    direction u_i (IMTL-G's and ConFIG's direction). Eigenvalues of N below `rtol` times the
    largest are dropped."""
    norms, cosines = cosine_matrix(gram)
    v = torch.zeros(norms.numel(), dtype=torch.float64)
    nonzero = torch.nonzero(norms > 0).flatten()
    if nonzero.numel() == 0:
        return norms, cosines, v, 0
    values, vectors = torch.linalg.eigh(cosines[nonzero][:, nonzero])
    keep = values > rtol * float(values.max().clamp_min(0))
    if bool(keep.any()):
        kept = vectors[:, keep]
        ones = torch.ones(nonzero.numel(), dtype=torch.float64)
        v[nonzero] = kept @ ((kept.T @ ones) / values[keep])
    return norms, cosines, v, int(keep.sum())
