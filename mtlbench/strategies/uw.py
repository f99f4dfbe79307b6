"""Uncertainty weighting (UW): learned per-task log-variances s_i weigh the losses (Kendall, Gal &
Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics",
CVPR 2018, https://arxiv.org/abs/1705.07115), in the form LibMTL trains it:

    L = Σ_i [ L_i / (2 exp(s_i)) + s_i / 2 ],   s_i = log σ_i²,
    w_i = ∂L/∂L_i = 1 / (2 exp(s_i)),   ∂L/∂s_i = (1 − L_i / exp(s_i)) / 2

so for a fixed L_i the optimum is exp(s_i) = L_i: at equilibrium every task weighs 1/(2 L_i), the
real-time normalization of eq. (4)–(6) reached by learning instead of by a stop-gradient. (The
paper writes 1/σ² for classification and 1/(2σ²) for regression with log σ regularizers; LibMTL
uses the regression form for every task, as here.) The s_i are strategy parameters: the loop trains
them with the network's optimizer as their own parameter group (``lr``: None = the optimizer's),
and checkpoints them. ``init`` = −0.5 is LibMTL's initial value.

No invariance claims: both hold only once s has converged (w_i → 1/(2 L_i) is scale-invariant).

Parameters:
    init: initial s_i (a finite real). lr: learning rate of s (> 0), or None.
Returns weights [n] = 1 / (2 exp(s)), in the losses' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.strategies.base import GradientStats, LearnedPerTask


class UncertaintyWeighting(LearnedPerTask):
    """Learned log-variance per task (see module doc)."""

    state_key = "log_var"

    def __init__(self, *, init: float = -0.5, lr: float | None = None) -> None:
        super().__init__(init=init, lr=lr)

    @property
    def log_var(self) -> Tensor:
        return self.learned()

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        return (0.5 * torch.exp(-self.log_var.detach())).to(losses.dtype)

    def objective(self, losses: Tensor) -> Tensor:
        s = self.log_var.to(losses.dtype)
        return (0.5 * losses * torch.exp(-s) + 0.5 * s).sum()
