"""Single-task baseline: train one task alone, eq. (1) with n = 1 and α = 1.

    L = L_1

The baselines of Δm% (``mtlbench report``) are runs of this strategy, one per task, selected with
``strategy=single_task data.only=<task>``.

Source: https://kexue.fm/archives/8870 (eq. 1, n = 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import GradientStats, SetupContext, Strategy


class SingleTask(Strategy):
    """Weight 1 for the only task. ``setup`` refuses a task mix: select one with ``data.only``."""

    def setup(self, ctx: SetupContext) -> None:
        names = [t.name for t in ctx.tasks]
        if len(names) != 1:
            raise ConfigError(
                f"`strategy=single_task` trains exactly one task, but {len(names)} are present "
                f"({', '.join(names)}); set data.only=<task> (one of {', '.join(names)})."
            )

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        return torch.ones_like(losses)

    def objective(self, losses: Tensor) -> Tensor:
        return losses.sum()
