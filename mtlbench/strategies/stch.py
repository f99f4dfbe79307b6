"""STCH: smooth Tchebycheff scalarization of the log losses, normalized by a nadir vector measured
after a warm-up (Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization",
ICML 2024, https://arxiv.org/abs/2402.19078), in the form of the authors' MTL code (LibMTL's
``STCH``, the same as https://github.com/Xi-L/STCH ``STCH_MTL``).

The paper's g_μ(λ) = μ log Σ_i exp(λ_i (f_i − z*_i) / μ), a smooth max of λ_i (f_i − z*_i), is
applied with f_i = log(L_i / N_i), z* = 0 and λ_i = 1, times n (the authors' code):

    epochs e < E (warm-up):    L = Σ_i log L_i,                        w_i = 1 / L_i
    epoch e = E:               the same, and N = the mean loss [n] over this epoch's applied steps
    epochs e > E:              L = n μ log Σ_i exp(log(L_i / N_i) / μ),
                               w_i = ∂L/∂L_i = n softmax(ℓ / μ)_i / L_i,   ℓ_i = log(L_i / N_i)

(E = ``warmup_epoch``; epochs are 0-based, as LibMTL's, so E + 1 epochs train on the log losses;
if epoch E has no applied step, N is the mean over the next epoch that has one). In both phases
Σ_i w_i L_i = n. μ → 0: L → n max_i ℓ_i (Tchebycheff: only the task furthest above its nadir,
relatively, is trained, w_k = n / L_k); μ → ∞: softmax → 1/n, w_i → 1 / L_i, the warm-up's
log-loss weighting (``realtime``), not equal weights on the losses. The softmax is computed in
float64 (stable for any μ > 0). A loss (or nadir) that is not a positive normal number is floored
(``base.floored``) where LibMTL adds 1e-20 inside the logarithm. The loop reports applied steps
(``after_step``) and epoch ends (``end_of_epoch``); the epoch, the running sum of the nadir epoch
and N are the checkpointed state, so a resume mid-warm-up is exact.

Claims: scale invariant (a ``loss_scale`` λ scales L_k and N_k together: ℓ and the softmax are
unchanged and w_k ∝ 1 / L_k); not shift invariant.

Parameters:
    mu: μ > 0 (1.0, LibMTL's ``STCH_mu`` default). warmup_epoch: E ≥ 0 (4, LibMTL's default).
Returns weights [n], in the losses' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.base import (
    GradientStats,
    SetupContext,
    Strategy,
    check_int,
    check_positive,
    finite_weights,
    floored,
    wide,
)


class STCH(Strategy):
    """Smooth max of the nadir-normalized log losses after a log-loss warm-up (see module doc)."""

    scale_invariant = True

    def __init__(self, *, mu: float = 1.0, warmup_epoch: int = 4) -> None:
        self.mu = check_positive("mu", mu)
        self.warmup_epoch = check_int("warmup_epoch", warmup_epoch, minimum=0)
        self.epoch = 0  # the epoch being trained (0-based)
        self.total: Tensor | None = None  # Σ of the nadir epoch's losses [n], float64 (CPU)
        self.count = 0
        self.nadir: Tensor | None = None  # N [n], float64 (CPU); None during the warm-up

    def setup(self, ctx: SetupContext) -> None:
        self.total = torch.zeros(len(ctx.tasks), dtype=torch.float64)
        self.epoch, self.count, self.nadir = 0, 0, None

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        wide_losses = floored(losses.detach().to(wide(losses)))
        if self.nadir is None:
            return finite_weights(1.0 / wide_losses, losses)
        ell = wide_losses.log() - self.nadir.to(wide_losses).log()
        w = losses.numel() * torch.softmax(ell / self.mu, dim=0) / wide_losses
        return finite_weights(w, losses)

    def objective(self, losses: Tensor) -> Tensor:
        """Σ_i log L_i during the warm-up, then n μ log Σ_i exp(log(L_i / N_i) / μ)."""
        log_losses = floored(losses).log()
        if self.nadir is None:
            return log_losses.sum()
        ell = log_losses - self.nadir.log().to(losses)
        return losses.numel() * self.mu * torch.logsumexp(ell / self.mu, dim=0)

    def after_step(self, losses: Tensor) -> None:
        assert self.total is not None, "call setup() first"
        if self.nadir is None and self.epoch >= self.warmup_epoch:
            self.total += losses.detach().double().cpu()
            self.count += 1

    def end_of_epoch(self, epoch: int) -> None:
        assert self.total is not None, "call setup() first"
        if self.nadir is None and epoch >= self.warmup_epoch and self.count:
            self.nadir = floored(self.total / self.count)
        self.epoch = epoch + 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "total": self.total, "count": self.count,
                "nadir": self.nadir}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.count = int(state["epoch"]), int(state["count"])
        self.total, self.nadir = state["total"], state["nadir"]
