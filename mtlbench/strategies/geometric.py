"""Geometric mean of the losses, eq. (7).

    L = (Π_i L_i)^(1/n),   w_i = ∂L/∂L_i = L / (n L_i)

Same gradient direction as real-time normalization (eq. 6). Computed in log space.
Source: https://kexue.fm/archives/8870 (eq. 7).
"""

from __future__ import annotations

from torch import Tensor

from mtlbench.strategies.base import GradientStats, Strategy, floored


class Geometric(Strategy):
    """The geometric mean of the task losses (losses floored at ``LOSS_FLOOR``). Scale-invariant."""

    scale_invariant = True

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        log_l = floored(losses).log()
        return (log_l.mean() - log_l).exp() / losses.numel()

    def objective(self, losses: Tensor) -> Tensor:
        return floored(losses).log().mean().exp()
