"""Real-time loss normalization, eq. (4)-(6).

    L = Σ_i L_i / sg(L_i),   ∇L = Σ_i ∇L_i / L_i = ∇ Σ_i log L_i

so w_i = 1/L_i (sg = stop-gradient). Scale-invariant (for positive losses of any magnitude: they
are never floored), not shift-invariant. A loss of exactly 0 (or negative, or subnormal) is
replaced by ``LOSS_FLOOR`` = 2⁻²³ (``base.floored``): weight 8.4e6, finite.
Source: https://kexue.fm/archives/8870 (eq. 4-6).
"""

from __future__ import annotations

from torch import Tensor

from mtlbench.strategies.base import GradientStats, Strategy, floored


class Realtime(Strategy):
    """Divide each loss by its own detached value (zero losses: see the module docstring)."""

    scale_invariant = True

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        return 1.0 / floored(losses)

    def objective(self, losses: Tensor) -> Tensor:
        return (losses / floored(losses).detach()).sum()
