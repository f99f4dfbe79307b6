"""Initial-loss normalization, eq. (2).

    L = Σ_i L_i / L_i^(init),   w_i = 1 / L_i^(init)

``source=measured``: L_i^(init) is the mean loss of the untrained model over ``batches`` training
batches. ``source=derived``: outputs ≈ 0 at initialization, so L^(init) = log K (K-class
cross-entropy) or E||y||²/d (mean squared error over d dimensions); both after the task's
loss_scale/loss_shift.
Scale-invariant, not shift-invariant. Source: https://kexue.fm/archives/8870 (eq. 2).
"""

from __future__ import annotations

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import (
    ReferenceNormalized,
    SetupContext,
    check_choice,
    reference_losses,
)


class InitLoss(ReferenceNormalized):
    """Divide each loss by its value at initialization (measured or derived).

    Parameters:
        source: ``measured`` or ``derived``.
        batches: number of training batches averaged when ``source=measured`` (≥ 1).
    """

    scale_invariant = True

    def __init__(self, *, source: str = "measured", batches: int = 10) -> None:
        self.source = check_choice("strategy.source", source, ("measured", "derived"))
        if not isinstance(batches, int) or isinstance(batches, bool) or batches < 1:
            raise ConfigError(
                f"Parameter `strategy.batches` must be an integer >= 1. "
                f"Found `strategy.batches = {batches}`."
            )
        self.batches = batches

    def setup(self, ctx: SetupContext) -> None:
        if self.source == "derived":
            values = [t.derived_init_loss(ctx.train_targets[t.name]) for t in ctx.tasks]
        else:
            assert ctx.measure_losses is not None, (
                "source=measured needs SetupContext.measure_losses"
            )
            values = ctx.measure_losses(self.batches).detach().double().cpu().tolist()
        self.reference = reference_losses(values, ctx.tasks, f"{self.source} initial loss")
