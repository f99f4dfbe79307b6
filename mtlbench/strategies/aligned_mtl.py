"""Aligned-MTL: align the task gradients into an orthogonal, equal-norm set before averaging
(Senushkin et al., 2023, "Independent Component Alignment for Multi-Task Learning").

    G = V Λ Vᵀ  (the r eigenvalues λ_1 ≥ … ≥ λ_r above n · ε · λ_1, eigenvectors V [n, r]),
    B = σ V Λ^(-1/2) Vᵀ,   w = B (1/n),   d = Σ_i w_i g_i = (1/n) Σ_i ĝ_i

where the aligned gradients ĝ_i = Σ_j B_ij g_j have Gramian B G B = σ² V Vᵀ: orthogonal, all of
norm σ (condition number 1 on the span of the gradients). σ² = λ_r (``scale_mode=min``, the
paper's and the official code's default), the median (``median``) or the mean (``rmse``) of the
λ's. Weights may be negative. Like torchjd's ``AlignedMTLWeighting`` this averages the aligned
gradients; the official code and LibMTL *sum* them (w = B 1): their update is n times this one (a
step-size factor). ε is float32's machine epsilon, as in the official code and LibMTL
(``torch.finfo().eps`` whatever the dtype); torchjd takes the Gramian's dtype's, which for
mtlbench's float64 Gramian (2.2e-16) keeps directions 5·10⁸ times smaller, whose λ_r then shrinks
the whole update with ``scale_mode=min`` (on the default synthetic run one step in seven was cut
differently). So the decomposition is done here, in float64, with the official cut.
Paper: https://arxiv.org/abs/2305.19000 (Aligned-MTL-UB = ``params=representation``); official
code: github.com/SamsungLabs/MTL, ``code/optim/aligned/solver.py``.

Claims: not scale invariant (scaling g_k changes the eigenbasis); with ``normalize`` it is. Shift
invariant.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
    scale_mode: ``min``, ``median`` or ``rmse`` (σ² above).
Returns weights [n] (1/n each if every gradient is 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.base import Strategy, check_choice
from mtlbench.strategies.gramian_weighting import GramianWeighting

SCALE_MODES = ("min", "median", "rmse")
#: ε of the rank cut n · ε · λ_1: float32's, as the official code's ``torch.finfo().eps``.
RANK_EPS = torch.finfo(torch.float32).eps


def aligned_mean_weights(gramian: Tensor, scale_mode: str = "min") -> Tensor:
    """w = B (1/n) [n] for a Gramian [n, n] (float64): B = σ V Λ^(-1/2) Vᵀ over the eigenvalues
    above n · :data:`RANK_EPS` · λ_1 (1/n each when there is none)."""
    n = gramian.shape[0]
    lam, v = torch.linalg.eigh(gramian)
    keep = lam > lam.max() * n * RANK_EPS
    mean = torch.full((n,), 1.0 / n, dtype=gramian.dtype)
    if not bool(keep.any()):
        return mean
    lam, v = lam[keep], v[:, keep]
    sigma2 = {"min": lam.min(), "median": lam.median(), "rmse": lam.mean()}[scale_mode]
    return sigma2.sqrt() * (v * lam.rsqrt()) @ (v.T @ mean)


class AlignedMTL(GramianWeighting):
    """Average of the gradients aligned to an orthogonal equal-norm set (see module doc)."""

    name = "aligned_mtl"
    nonnegative_weights = False

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None,
                 scale_mode: str = "min") -> None:
        self.scale_mode = check_choice("scale_mode", scale_mode, SCALE_MODES)
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        return lambda gramian: aligned_mean_weights(gramian, self.scale_mode)
