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

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.base import (
    GradientStats,
    SetupContext,
    Strategy,
    check_positive,
    check_real,
)


class UncertaintyWeighting(Strategy):
    """Learned log-variance per task (see module doc)."""

    def __init__(self, *, init: float = -0.5, lr: float | None = None) -> None:
        self.init = check_real("init", init)
        self.lr = None if lr is None else check_positive("lr", lr)
        self.log_var: Tensor | None = None

    def setup(self, ctx: SetupContext) -> None:
        device = next(iter(ctx.train_targets.values())).device if ctx.train_targets else None
        self.log_var = torch.full((len(ctx.tasks),), self.init, dtype=torch.float32,
                                  device=device, requires_grad=True)

    def parameters(self) -> list[Tensor]:
        assert self.log_var is not None, "call setup() first"
        return [self.log_var]

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        assert self.log_var is not None, "call setup() first"
        return (0.5 * torch.exp(-self.log_var.detach())).to(losses.dtype)

    def objective(self, losses: Tensor) -> Tensor:
        assert self.log_var is not None, "call setup() first"
        s = self.log_var.to(losses.dtype)
        return (0.5 * losses * torch.exp(-s) + 0.5 * s).sum()

    def state_dict(self) -> dict[str, Any]:
        assert self.log_var is not None, "call setup() first"
        return {"log_var": self.log_var.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.log_var is not None, "call setup() first"
        with torch.no_grad():
            self.log_var.copy_(state["log_var"])
