"""Aligned-MTL: align the task gradients into an orthogonal, equal-norm set before averaging
(Senushkin et al., 2023, "Independent Component Alignment for Multi-Task Learning").

    G = V Λ Vᵀ  (the r eigenvalues λ_1 ≥ … ≥ λ_r above n · ε · λ_1, eigenvectors V [n, r]),
    B = σ V Λ^(-1/2) Vᵀ,   w = B (1/n),   d = Σ_i w_i g_i = (1/n) Σ_i ĝ_i

where the aligned gradients ĝ_i = Σ_j B_ij g_j have Gramian B G B = σ² V Vᵀ: orthogonal, all of
norm σ (condition number 1 on the span of the gradients). σ² = λ_r (``scale_mode=min``, the
paper's and the official code's default), the median (``median``) or the mean (``rmse``) of the
λ's. Weights may be negative. Like torchjd's ``AlignedMTLWeighting`` this averages the aligned
gradients; the official code and LibMTL *sum* them (w = B 1): their update is n times this one (a
step-size factor).

The rank cut ε is a numerical-rank tolerance: ``rank_eps=null`` (default) takes float64's ε, the
Gramian's dtype here, as torchjd does; the official code and LibMTL form the Gramian in float32 and
take float32's ε (``torch.finfo().eps``, ``rank_eps=1.1920929e-07``), below which their float32
eigenvalues are rounding noise. mtlbench's Gramian is float64 (accurate to ~1e-14 relative for
float32 gradients), so the default keeps directions the official code drops. This matters: with
``scale_mode=min`` σ² is the smallest eigenvalue kept, so a cut that falls between λ_r and
λ_{r-1} changes the update's norm by (λ_{r-1}/λ_r)^½; on the synthetic 4-task mix, whose smallest
eigenvalue sits near the float32 cut, the official cut changed the result of 1000 steps from
Δm +3 % to +22 % (README, strategy comparison).
Paper: https://arxiv.org/abs/2305.19000 (Aligned-MTL-UB = ``params=representation``); official
code: github.com/SamsungLabs/MTL, ``code/optim/aligned/solver.py``.

Claims: not scale invariant (scaling g_k changes the eigenbasis); with ``normalize`` it is. Shift
invariant.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
    scale_mode: ``min``, ``median`` or ``rmse`` (σ² above).
    rank_eps: ε of the rank cut, ≥ 0, or None for the Gramian's dtype's (float64: 2.2e-16,
        torchjd's); the official code's is float32's 1.1920929e-07.
Returns weights [n] (1/n each if every gradient is 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.checks import check_positive
from mtlbench.strategies.base import Strategy, check_choice
from mtlbench.strategies.gramian_weighting import GramianWeighting

SCALE_MODES = ("min", "median", "rmse")


def aligned_mean_weights(gramian: Tensor, scale_mode: str = "min",
                         rank_eps: float | None = None) -> Tensor:
    """w = B (1/n) [n] for a Gramian [n, n]: B = σ V Λ^(-1/2) Vᵀ over the eigenvalues above
    n · ε · λ_1, ε = ``rank_eps`` or the Gramian's dtype's machine epsilon (1/n each when no
    eigenvalue is kept)."""
    n = gramian.shape[0]
    eps = torch.finfo(gramian.dtype).eps if rank_eps is None else rank_eps
    lam, v = torch.linalg.eigh(gramian, UPLO="U")
    keep = lam > lam.max() * n * eps
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
                 scale_mode: str = "min", rank_eps: float | None = None) -> None:
        self.scale_mode = check_choice("scale_mode", scale_mode, SCALE_MODES)
        self.rank_eps = None if rank_eps is None else check_positive("rank_eps", rank_eps,
                                                                     allow_zero=True)
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        return lambda gramian: aligned_mean_weights(gramian, self.scale_mode, self.rank_eps)
