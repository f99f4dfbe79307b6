"""UPGrad: project every task gradient onto the dual cone of all of them, then average (Quinton &
Rey, 2024, "Jacobian Descent for Multi-Objective Optimization").

    π(x) = argmin_{y : g_j · y ≥ 0 ∀j} ||y − x||²,      d = (1/n) Σ_i π(g_i) = Σ_i w_i g_i,
    w = Σ_i v⁽ⁱ⁾,   v⁽ⁱ⁾ = argmin_{v ≥ e_i / n} vᵀ (G + ε I) v           (Proposition 1)

(the dual of the projection of g_i / n, in weights). The update is non-conflicting: g_j · d ≥ 0
for every j (up to the regularization ε, relative to tr G), and w ≥ 1/n. Solved by torchjd's
``UPGradWeighting`` with its quadprog projector on G / tr G (``reg_eps`` = ε).
Paper: https://arxiv.org/abs/2406.16232.

Claims: not scale invariant (the projections of the other tasks' gradients do not scale with g_k);
with ``normalize`` it is. Shift invariant.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
    reg_eps: > 0, ε added to the diagonal of G / tr G so that the QP is strictly convex
        (torchjd's and LibMTL's default 1e-4).
Returns weights [n] ≥ 1/n.
"""

from __future__ import annotations

from typing import Any

from mtlbench.strategies.base import Strategy, check_positive
from mtlbench.strategies.gramian_weighting import GramianWeighting


class UPGrad(GramianWeighting):
    """Mean of the task gradients' projections onto their dual cone (see module doc)."""

    name = "upgrad"
    solver = "quadprog"

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None,
                 reg_eps: float = 1e-4) -> None:
        self.reg_eps = check_positive("reg_eps", reg_eps)
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        from torchjd.aggregation import UPGradWeighting
        from torchjd.linalg import QuadprogProjector

        return UPGradWeighting(projector=QuadprogProjector(reg_eps=self.reg_eps))
