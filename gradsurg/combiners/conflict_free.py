"""`config`: ConFIG, conflict-free inverse gradients (Liu, Chu & Thuerey, 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, DtypeAwareWeighting
from gradsurg.combiners.gramian import rank_tolerance
from gradsurg.combiners.imtlg import equal_projection_solution


@COMBINERS.register
class ConFIG(DtypeAwareWeighting):
    """The direction equally close to every group's, as long as the sum's share along it.

        u_i = g_i / ||g_i||,   g_v = pinv([u_1 ... u_k]^T) 1,   e = g_v / ||g_v||
        g   = (sum_i g_i . e) e

    Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks" (arXiv 2408.11104, 2024), eq. 2 with equal weights. g_v = sum_j v_j u_j with
    v = pinv(N) 1 on the cosine matrix N (`imtlg.equal_projection_solution`, shared with
    IMTL-G, whose direction this is), so only the Gramian is needed; eigenvalues of N below
    32 k eps (eps of the input's dtype) are dropped. With linearly independent rows
    u_i . e = 1 / ||g_v|| for every i, so the output conflicts with no group. Zero rows have no
    direction: they do not shape e, and their (zero) projection adds nothing to the length.

    Scaling: the length sum_i g_i . e is the paper's own and is on `sum`'s scale (identical
    rows give their sum; it is the projection of the sum onto e). Cost: the Gramian and one
    k x k eigendecomposition per step.
    """

    name = "config"

    def weights_for(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, dict[str, float]]:
        return config_weights(gram, rtol=rank_tolerance(gram.shape[0], dtype))


def config_weights(gram: Tensor, *, rtol: float) -> tuple[Tensor, dict[str, float]]:
    """ConFIG's float64 weights from the Gramian; see `ConFIG`.

    In units of the u_j the output is L g_v with L = (sum_i ||g_i|| (N v)_i) / (v^T N v), so
    w_j = L v_j / ||g_j||: every quantity but the norms is of order one.
    """
    norms, cosines, v, rank = equal_projection_solution(gram, rtol=rtol)
    weights = torch.zeros(norms.numel(), dtype=torch.float64)
    info = {"config/rank": float(rank), "config/length_ratio": 0.0}
    square = float(v @ cosines @ v)  # ||g_v||^2
    nonzero = norms > 0
    if square > 0:
        length = float(norms @ (cosines @ v)) / square
        weights[nonzero] = length * v[nonzero] / norms[nonzero]
        # |g| / sum_i ||g_i||: 1 when every row points the same way, smaller with conflict
        info["config/length_ratio"] = abs(length) * square**0.5 / float(norms.sum())
    return weights.to(gram.device), info
