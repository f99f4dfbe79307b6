"""Dynamic weight average (DWA): weights from how fast each task's loss fell over the last two
epochs (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
https://arxiv.org/abs/1803.10704, eq. 7; LibMTL's ``DWA``).

    r_i(t−1) = L̄_i(t−1) / L̄_i(t−2),   w_i(t) = n · exp(r_i(t−1) / T) / Σ_j exp(r_j(t−1) / T)

with L̄_i(e) the mean training loss of task i over epoch e (applied steps), and w_i = 1 for the
first two epochs. A task whose loss falls slowly (r close to 1 or above) weighs more. The weights
sum to n (the paper's scale: n times ``equal``'s 1/n). The loop reports each applied step's losses
(``after_step``) and the end of every epoch (``end_of_epoch``); the running sums and the last two
epoch means are the strategy's state, so a resume mid-epoch is exact.

Shift- and scale-invariance: no (r_i is a ratio, so scaling a loss leaves r_i — but not the
update, whose task-i part scales with λ — unchanged; shifting a loss changes r_i).

Parameters:
    temperature: T > 0 (2.0, the paper's and LibMTL's default); large T → equal weights.
Returns weights [n] (sum n), in the losses' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.base import GradientStats, SetupContext, Strategy, check_positive


class DWA(Strategy):
    """Softmax of the last epoch-to-epoch loss ratios (see module doc)."""

    def __init__(self, *, temperature: float = 2.0) -> None:
        self.temperature = check_positive("temperature", temperature)
        self.total: Tensor | None = None  # running sum of this epoch's losses [n], float64
        self.count = 0
        self.means: list[Tensor] = []  # the last two epoch means, oldest first

    def setup(self, ctx: SetupContext) -> None:
        self.total = torch.zeros(len(ctx.tasks), dtype=torch.float64)
        self.count, self.means = 0, []

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        n = losses.numel()
        if len(self.means) < 2:
            return torch.ones_like(losses)
        ratio = self.means[1] / self.means[0]
        return (n * torch.softmax(ratio / self.temperature, dim=0)).to(losses)

    def objective(self, losses: Tensor) -> Tensor:
        """Σ_i w_i L_i with this epoch's (constant) weights."""
        return (self.weights(losses.detach()) * losses).sum()

    def after_step(self, losses: Tensor) -> None:
        assert self.total is not None, "call setup() first"
        self.total += losses.detach().double().cpu()
        self.count += 1

    def end_of_epoch(self, epoch: int) -> None:
        assert self.total is not None, "call setup() first"
        if self.count:
            self.means = [*self.means, self.total / self.count][-2:]
        self.total, self.count = torch.zeros_like(self.total), 0

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count, "means": list(self.means)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.count = state["total"], int(state["count"])
        self.means = list(state["means"])
