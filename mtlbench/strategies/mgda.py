"""MGDA: the minimum-norm point of the convex hull of the task gradients (Sener & Koltun, 2018).

    w = argmin_{w ∈ Δ} || Σ_i w_i g_i ||² = argmin_{w ∈ Δ} wᵀ G w,   Δ = {w ≥ 0, Σ_i w_i = 1}

The update d = Σ_i w_i g_i has d · g_i ≥ ||d||² for every i (a common descent direction, 0 at a
Pareto-stationary point). For 2 tasks: w_1 = clip((g_2·g_2 − g_1·g_2) / ||g_1 − g_2||², 0, 1).
Solved by torchjd's ``MGDAWeighting``: Frank-Wolfe from the uniform weights with exact line
search (Algorithm 2 of the paper; exact for n = 2), stopped when the step γ < ``epsilon`` or after
``max_iters`` steps — an approximation for n ≥ 3.
Paper: https://arxiv.org/abs/1810.04650 (MGDA-UB = ``params=representation``).

Claims: not scale invariant (the min-norm point moves toward the smaller gradient); with
``normalize`` (LibMTL's ``mgda_gn=l2``) it is. Shift invariant.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
    epsilon: > 0, Frank-Wolfe stops when its step size is below it (torchjd default 1e-3).
    max_iters: ≥ 1, Frank-Wolfe iterations at most (torchjd default 100).
Returns weights [n] ≥ 0 summing to 1 (to 1 / ||g_i||-scaled ones with ``normalize``).
"""

from __future__ import annotations

from typing import Any

from mtlbench.strategies.base import Strategy, check_int, check_positive
from mtlbench.strategies.gramian_weighting import GramianWeighting


class MGDA(GramianWeighting):
    """Min-norm convex combination of the task gradients (see module doc)."""

    name = "mgda"

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None,
                 epsilon: float = 1e-3, max_iters: int = 100) -> None:
        self.epsilon = check_positive("epsilon", epsilon)
        self.max_iters = check_int("max_iters", max_iters, minimum=1)
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        from torchjd.aggregation import MGDAWeighting

        return MGDAWeighting(epsilon=self.epsilon, max_iters=self.max_iters)
