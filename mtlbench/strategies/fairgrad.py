"""FairGrad: α-fair allocation of the step's improvement among the tasks (Ban & Ji, 2024, "Fair
Resource Allocation in Multi-Task Learning", eq. 4).

    d = Σ_i w_i g_i   with   G w = w^(−1/α)   (elementwise; w > 0),

i.e. each task's first-order improvement g_i · d equals w_i^(−1/α). α = 1 (proportional fairness)
is Nash-MTL's bargaining condition; α → ∞ tends to max-min fairness (MGDA-like); α = 0 returns the
mean weights. Solved by torchjd's ``FairGradWeighting`` (scipy ``least_squares`` from 1/n,
bounds w ≥ 0, its default tolerances ≈1e-8 — so the condition holds to solver tolerance). The
weights scale with the gradients: w(sG) = s^(−α/(1+α)) w(G) (``degree``), which the adapter uses
to solve on G / tr G (torchjd's absolute tolerances would otherwise stop far from the solution for
small gradients).

Claims: for α = 1, scaling task k's loss by λ gives exactly w_k → w_k / λ and the other weights
unchanged (G' = S G S, w' = S⁻¹ w solves it), so the whole update is unchanged: scale invariant;
the adapter then solves on the cosine matrix (``via_cosines``, w = w'(C) / ||g||, the same
solution), so the claim holds to rounding rather than to solver tolerance. Other α: not scale
invariant (invariant with ``normalize``). Shift invariant.

A task whose gradient is exactly 0 would need w_k = +∞ ((G w)_k = 0); its equation does not involve
the other weights, so the others are solved without it and it gets their largest weight (finite; it
only scales its head). All gradients 0: weights 1.
Paper: https://arxiv.org/abs/2402.15638.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
    alpha: α ≥ 0 (1.0: the default of the authors' code and of LibMTL; the authors' experiments
        ran 2.0).
Returns weights [n] > 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.base import Strategy, check_positive
from mtlbench.strategies.gramian_weighting import GramianWeighting


class FairGrad(GramianWeighting):
    """α-fair weights: G w = w^(−1/α) (see module doc)."""

    name = "fairgrad"
    solver = "scipy"

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None,
                 alpha: float = 1.0) -> None:
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.degree = -self.alpha / (1.0 + self.alpha)
        self.via_cosines = self.alpha == 1.0
        self.scale_invariant = heads == "weighted" and (self.via_cosines or normalize is True)
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        from torchjd.aggregation import FairGradWeighting

        return FairGradWeighting(alpha=self.alpha)

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        nonzero = gramian.diagonal() > 0
        if bool(nonzero.all()):
            return super().gramian_weights(gramian)
        w = torch.ones(gramian.shape[0], dtype=gramian.dtype)
        if bool(nonzero.any()):
            idx = nonzero.nonzero().squeeze(1)
            sub = super().gramian_weights(gramian[idx][:, idx])
            w[idx] = sub
            w[~nonzero] = sub.max()
        return w
