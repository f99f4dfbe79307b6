"""User-given static weights, eq. (1).

    L = Σ_i α_i L_i,   α_i ≥ 0

Source: https://kexue.fm/archives/8870 (eq. 1).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import (
    GradientStats,
    SetupContext,
    Strategy,
    as_loss_vector,
    check_real,
)


class Static(Strategy):
    """Fixed weights α_i from ``strategy.weights`` (task name → weight; unnamed tasks weigh 1).

    Parameters:
        weights: mapping task name → α_i ≥ 0; at least one α_i must be > 0.

    Not scale-invariant; shift-invariant (the weights do not depend on the losses).
    """

    shift_invariant = True

    def __init__(self, *, weights: Mapping[str, float] | None = None) -> None:
        if weights is not None and not isinstance(weights, Mapping):
            raise ConfigError(
                "Parameter `strategy.weights` must map task names to weights, e.g. "
                f"strategy.weights={{cls_k2:1,reg_x1:0.5}}. Found `strategy.weights = {weights}`."
            )
        self.given = {
            str(k): check_real(f"strategy.weights.{k}", v) for k, v in (weights or {}).items()
        }
        for key, value in self.given.items():
            if value < 0:
                raise ConfigError(
                    f"Parameter `strategy.weights.{key}` must be >= 0. "
                    f"Found `strategy.weights.{key} = {value}`."
                )
        self.alpha: list[float] = []

    def setup(self, ctx: SetupContext) -> None:
        names = [t.name for t in ctx.tasks]
        unknown = sorted(set(self.given) - set(names))
        if unknown:
            raise ConfigError(
                f"`strategy.weights.{unknown[0]}` names no task; the tasks are {', '.join(names)}."
            )
        self.alpha = [self.given.get(name, 1.0) for name in names]
        if not any(a > 0 for a in self.alpha):
            raise ConfigError("`strategy.weights` must give at least one task a weight > 0. "
                              "Found all weights = 0.")

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        return as_loss_vector(self.alpha, losses).to(losses.dtype)

    def objective(self, losses: Tensor) -> Tensor:
        return (self.weights(losses) * losses).sum()
