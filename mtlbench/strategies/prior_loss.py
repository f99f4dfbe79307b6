"""Prior-loss normalization, eq. (3).

    L = Σ_i L_i / L_i^(prior),   w_i = 1 / L_i^(prior)

L^(prior) is the loss of a model that knows only the label distribution of the training split: the
label entropy -Σ_k p_k log p_k for classification, the label variance E||y - μ||²/d for regression,
after the task's loss_scale/loss_shift. Scale-invariant, not shift-invariant.
Source: https://kexue.fm/archives/8870 (eq. 3).
"""

from __future__ import annotations

from mtlbench.strategies.base import ReferenceNormalized, SetupContext, reference_losses


class PriorLoss(ReferenceNormalized):
    """Divide each loss by the loss of the best label-distribution-only predictor."""

    scale_invariant = True

    def setup(self, ctx: SetupContext) -> None:
        values = [t.prior_loss(ctx.train_targets[t.name]) for t in ctx.tasks]
        self.reference = reference_losses(values, ctx.tasks, "prior loss")
