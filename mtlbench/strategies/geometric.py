"""Geometric mean of the losses, eq. (7).

    L = (Π_i L_i)^(1/n),   w_i = ∂L/∂L_i = L / (n L_i) = exp(mean_j log L_j − log L_i) / n

Same gradient direction as real-time normalization (eq. 6). Computed in float64 log space
(``base.wide``), so the weights are exact (scale-invariant) for positive losses of any magnitude; a
loss of exactly 0 is replaced by ``LOSS_FLOOR`` = 2⁻²³ (``base.floored``), and a weight beyond the
losses' dtype is clamped to its largest finite value. Source: https://kexue.fm/archives/8870
(eq. 7).
"""

from __future__ import annotations

from torch import Tensor

from mtlbench.strategies.base import GradientStats, Strategy, finite_weights, floored, wide


class Geometric(Strategy):
    """The geometric mean of the task losses (zero losses floored, see the module docstring).
    Scale-invariant."""

    scale_invariant = True

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        log_l = floored(losses).to(wide(losses)).log_()
        return finite_weights((log_l.mean() - log_l).exp_().div_(losses.numel()), losses)

    def objective(self, losses: Tensor) -> Tensor:
        return floored(losses).to(wide(losses)).log().mean().exp().to(losses.dtype)
