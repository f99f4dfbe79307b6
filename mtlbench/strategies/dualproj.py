"""DualProj: project the mean gradient onto the dual cone of the task gradients (the GEM
projection of Lopez-Paz & Ranzato, 2017, eq. 11, with every task as a constraint).

    d = argmin_{y : g_j · y ≥ 0 ∀j} ||y − (1/n) Σ_i g_i||² = Σ_i w_i g_i,
    w = argmin_{v ≥ 1/n} vᵀ (G + ε I) v          (the dual QP, in weights)

The update is non-conflicting: g_j · d ≥ 0 for every j (up to ε, relative to tr G), and w ≥ 1/n;
when the mean conflicts with no task, w = 1/n (the mean). Solved by torchjd's
``DualProjWeighting`` with its quadprog projector on G / tr G (``reg_eps`` = ε).
Paper: https://arxiv.org/abs/1706.08840 (GEM); as an aggregator: https://arxiv.org/abs/2406.16232.

Claims: not scale invariant (the mean is not); with ``normalize`` it is. Shift invariant.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
    reg_eps: > 0, ε added to the diagonal of G / tr G (torchjd's default 1e-4).
Returns weights [n] ≥ 1/n.
"""

from __future__ import annotations

from typing import Any

from mtlbench.strategies.base import Strategy, check_positive
from mtlbench.strategies.gramian_weighting import GramianWeighting


class DualProj(GramianWeighting):
    """Projection of the mean gradient onto the dual cone of the task gradients (see module
    doc)."""

    name = "dualproj"
    solver = "quadprog"

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None,
                 reg_eps: float = 1e-4) -> None:
        self.reg_eps = check_positive("reg_eps", reg_eps)
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        from torchjd.aggregation import DualProjWeighting
        from torchjd.linalg import QuadprogProjector

        return DualProjWeighting(projector=QuadprogProjector(reg_eps=self.reg_eps))
