"""Equal weighting, eq. (1) with α_i = 1/n.

    L = (1/n) Σ_i L_i

Source: https://kexue.fm/archives/8870 (eq. 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.strategies.base import GradientStats, Strategy


class Equal(Strategy):
    """The arithmetic mean of the task losses; every task weighs 1/n.

    Not scale-invariant. Shift-invariant: the weights do not depend on the losses, and adding a
    constant to a loss does not change its gradient.
    """

    shift_invariant = True

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        return torch.full_like(losses, 1.0 / losses.numel())

    def objective(self, losses: Tensor) -> Tensor:
        return losses.mean()
