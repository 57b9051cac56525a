"""`aligned_mtl`: Aligned-MTL (Senushkin et al., CVPR 2023), the gradients' principal
components rescaled to one singular value."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, DtypeAwareWeighting
from gradsurg.combiners.gramian import rank_tolerance


@COMBINERS.register
class AlignedMTL(DtypeAwareWeighting):
    """The group gradients made orthogonal and equally long, then summed.

        G = J J^T = V diag(lambda) V^T,  sigma_i = sqrt(lambda_i)   (rank R, lambda_R smallest)
        B = sigma_R V diag(1 / sigma) V^T                            (R retained components)
        g = (B J)^T 1 = J^T (B 1)

    Senushkin, Patakin, Botev & Konushin, "Independent Component Alignment for Multi-Task
    Learning" (CVPR 2023), Algorithm 1: B J = sigma_R U W^T has every singular value equal to
    the smallest, so the system's condition number is 1 and no component dominates. Eigenvalues
    below 32 k eps * lambda_max (eps of the input's dtype: the Gramian carries its rounding)
    count as 0, as in the authors' rank cut (which uses k eps); the components they span are
    dropped, zero rows included.

    Scaling: the paper (and torchjd's `AlignedMTL`) weights the aligned rows by the mean
    preference 1/k; here by 1, k times that, so identical rows give their plain `sum` and one
    group keeps its gradient. B does not change when G is scaled, so the output scales with
    the rows. Cost: the Gramian and one k x k eigendecomposition per step.
    """

    name = "aligned_mtl"

    def weights_for(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, dict[str, float]]:
        return aligned_weights(gram, rtol=rank_tolerance(gram.shape[0], dtype))


def aligned_weights(gram: Tensor, *, rtol: float) -> tuple[Tensor, dict[str, float]]:
    """B 1 for Aligned-MTL's balance matrix B; see `AlignedMTL`."""
    gram64 = gram.detach().to(device="cpu", dtype=torch.float64)
    k = gram64.shape[0]
    top = float(gram64.diagonal().max().clamp_min(0)) if k else 0.0
    info = {"aligned_mtl/rank": 0.0, "aligned_mtl/condition": 0.0}
    if top == 0.0:
        return torch.zeros(k, dtype=torch.float64, device=gram.device), info
    unit = (gram64 + gram64.T) / (2 * top)  # B is unchanged by scaling G; entries now <= 1
    values, vectors = torch.linalg.eigh(unit)
    keep = values > rtol * float(values.max())
    values, vectors = values[keep], vectors[:, keep]
    sigma = values.sqrt()
    ones = torch.ones(k, dtype=torch.float64)
    weights = float(sigma.min()) * (vectors @ ((vectors.T @ ones) / sigma))
    info["aligned_mtl/rank"] = float(keep.sum())
    info["aligned_mtl/condition"] = float(sigma.max() / sigma.min())  # of J, before alignment
    return weights.to(gram.device), info
