"""IMTL-L: learned loss scales that make every scaled loss equal to 1 (Liu et al., "Towards
Impartial Multi-task Learning", ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr, the loss
half of IMTL; LibMTL's ``IMTL`` loss scaling).

    L = Σ_i [ exp(s_i) L_i − s_i ],   w_i = ∂L/∂L_i = exp(s_i),   ∂L/∂s_i = exp(s_i) L_i − 1

so for a fixed L_i the optimum is exp(s_i) = 1 / L_i: every task's scaled loss is 1, the real-time
normalization of eq. (4)–(6) reached by learning. The s_i are strategy parameters, trained with the
network's optimizer in their own group (``lr``: None = the optimizer's) and checkpointed; s(0) = 0
(LibMTL). LibMTL's ``IMTL`` runs this together with IMTL-G on the scaled losses' gradients; here it
is the loss-side half alone.

No invariance claims (both hold only once s has converged).

Parameters:
    init: initial s_i (a finite real). lr: learning rate of s (> 0), or None.
Returns weights [n] = exp(s), in the losses' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.strategies.base import GradientStats, LearnedPerTask


class IMTLL(LearnedPerTask):
    """Learned log loss scales (see module doc)."""

    state_key = "log_scale"

    def __init__(self, *, init: float = 0.0, lr: float | None = None) -> None:
        super().__init__(init=init, lr=lr)

    @property
    def log_scale(self) -> Tensor:
        return self.learned()

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        return torch.exp(self.log_scale.detach()).to(losses.dtype)

    def objective(self, losses: Tensor) -> Tensor:
        s = self.log_scale.to(losses.dtype)
        return (torch.exp(s) * losses - s).sum()
