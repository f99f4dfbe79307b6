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


class IMTLL(Strategy):
    """Learned log loss scales (see module doc)."""

    def __init__(self, *, init: float = 0.0, lr: float | None = None) -> None:
        self.init = check_real("init", init)
        self.lr = None if lr is None else check_positive("lr", lr)
        self.log_scale: Tensor | None = None

    def setup(self, ctx: SetupContext) -> None:
        device = next(iter(ctx.train_targets.values())).device if ctx.train_targets else None
        self.log_scale = torch.full((len(ctx.tasks),), self.init, dtype=torch.float32,
                                    device=device, requires_grad=True)

    def parameters(self) -> list[Tensor]:
        assert self.log_scale is not None, "call setup() first"
        return [self.log_scale]

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        assert self.log_scale is not None, "call setup() first"
        return torch.exp(self.log_scale.detach()).to(losses.dtype)

    def objective(self, losses: Tensor) -> Tensor:
        assert self.log_scale is not None, "call setup() first"
        s = self.log_scale.to(losses.dtype)
        return (torch.exp(s) * losses - s).sum()

    def state_dict(self) -> dict[str, Any]:
        assert self.log_scale is not None, "call setup() first"
        return {"log_scale": self.log_scale.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.log_scale is not None, "call setup() first"
        with torch.no_grad():
            self.log_scale.copy_(state["log_scale"])
