"""Generalized (power) mean of the losses, eq. (8)-(9).

    L(γ) = ( (1/n) Σ_i L_i^γ )^(1/γ),   w_i = ∂L/∂L_i = (1/n) (L_i / L(γ))^(γ-1)

γ = 1 is the arithmetic mean (equal weights, eq. 1), γ → 0 the geometric mean (eq. 7), γ → +∞ the
maximum and γ → -∞ the minimum (eq. 9); L(γ) increases with γ. Larger γ focuses on the worst task.
Source: https://kexue.fm/archives/8870 (eq. 8-9).

Numerics (float64, log space; ``base.wide``). With ℓ_i = log L_i, ℓ̄ = mean_i ℓ_i and d_i = ℓ_i − ℓ̄,

    log L(γ) = ℓ̄ + δ(γ),   δ(γ) = (1/γ) log mean_i exp(γ d_i),   log w_i = (γ−1)(d_i − δ) − log n,

and δ is computed by whichever form keeps its absolute error at a few ulps of max|d_i| for that γ,
so that the weights are continuous in γ through 0 (where δ(0) = 0 is the geometric mean, eq. 7):

* |γ| ≤ ``SERIES_GAMMA`` (1e-8, γ = 0 and subnormal γ included): the cumulant series
  δ = γκ₂/2 + γ²κ₃/6 + γ³κ₄/24 (κ₂ = mean d², κ₃ = mean d³, κ₄ = mean d⁴ − 3κ₂²); the next term,
  γ⁴κ₅/120, is below 1e-17·max|d| since |γ d_i| ≤ 1.5e-5 for any float64 losses;
* ``SERIES_GAMMA`` < |γ| < ``LOGSUMEXP_GAMMA`` (0.25): δ = log1p(mean_i expm1(γ d_i)) / γ, which
  keeps the small deviation of the mean from 1 that log(mean exp) would round away
  (|γ d_i| ≤ 0.25·1420, so expm1 cannot overflow);
* |γ| ≥ ``LOGSUMEXP_GAMMA``: log L(γ) = (logsumexp(γ ℓ) − log n)/γ and w from a softmax (fewer ops;
  here 1/|γ| ≤ 4 does not amplify round-off), which is what keeps |γ| up to 1e6 finite.

Losses of exactly 0 are replaced by ``LOSS_FLOOR`` = 2⁻²³ (``base.floored``); positive losses are
used as they are, so γ = 0 is scale-invariant for any positive magnitudes.
Weights beyond the losses' dtype are clamped to its largest finite value.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlbench.strategies.base import (
    GradientStats,
    Strategy,
    check_real,
    finite_weights,
    floored,
    wide,
)

#: |γ| at or below this: δ(γ) from its cumulant series (see the module docstring).
SERIES_GAMMA = 1e-8
#: |γ| at or above this: log-sum-exp / softmax form; between the two: expm1/log1p.
LOGSUMEXP_GAMMA = 0.25


class GeneralizedMean(Strategy):
    """Power mean of the task losses with exponent γ.

    Parameters:
        gamma: any real number, ``0`` (geometric-mean limit), ``inf`` (max) or ``-inf`` (min).
    """

    def __init__(self, *, gamma: float = 1.0) -> None:
        self.gamma = check_real("gamma", gamma, allow_inf=True)
        # γ = 0 is the geometric mean (scale-invariant direction, eq. 6-7); γ = 1 gives equal
        # weights (which do not depend on the losses, hence shift-invariant). No other γ is either.
        self.scale_invariant = self.gamma == 0
        self.shift_invariant = self.gamma == 1

    def log_mean(self, losses: Tensor) -> Tensor:
        """log L(γ) for ``losses`` [n] (zero losses floored, see ``base.floored``), in float64."""
        return self._log_mean(floored(losses).to(wide(losses)).log())

    def _log_mean(self, log_l: Tensor) -> Tensor:
        if math.isinf(self.gamma):
            return log_l.max() if self.gamma > 0 else log_l.min()
        if abs(self.gamma) >= LOGSUMEXP_GAMMA:
            return ((torch.logsumexp(self.gamma * log_l, dim=0) - math.log(log_l.numel()))
                    / self.gamma)
        center = log_l.mean()
        return center + self._delta(log_l - center)

    def _delta(self, d: Tensor) -> Tensor:
        """δ(γ) = log L(γ) − mean log L from the centred logs d [n] (|γ| < LOGSUMEXP_GAMMA)."""
        g = self.gamma
        if abs(g) > SERIES_GAMMA:
            return torch.log1p(torch.expm1(g * d).mean()) / g
        if g == 0:
            return d.new_zeros(())
        d2 = d * d
        k2 = d2.mean()
        k3 = (d2 * d).mean()
        k4 = (d2 * d2).mean() - 3.0 * k2 * k2
        return g * (k2 / 2.0 + g * (k3 / 6.0 + g * (k4 / 24.0)))

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        if math.isinf(self.gamma):
            extreme = losses.max() if self.gamma > 0 else losses.min()
            hit = (losses == extreme).to(losses.dtype)
            return hit / hit.sum()
        if self.gamma == 1:
            return torch.full_like(losses, 1.0 / losses.numel())  # the arithmetic mean, eq. (1)
        log_l = floored(losses).to(wide(losses)).log_()
        log_n = math.log(losses.numel())
        if self.gamma == 0:  # the geometric mean, eq. (7): w_i = exp(mean log L − log L_i) / n
            return finite_weights((log_l.mean() - log_l).exp_().div_(losses.numel()), losses)
        if abs(self.gamma) < LOGSUMEXP_GAMMA:  # log w_i = (γ-1)(d_i - δ) - log n
            d = log_l.sub_(log_l.mean())
            log_w = (d - self._delta(d)).mul_(self.gamma - 1.0).sub_(log_n)
            return finite_weights(log_w.exp_(), losses)
        # (L_i / L(γ))^γ = n·s_i with s = softmax(γ log L), so log w_i = c·log s_i + (c-1)·log n,
        # c = (γ-1)/γ: the same value in fewer ops (this runs every step)
        c = (self.gamma - 1.0) / self.gamma
        log_w = torch.log_softmax(log_l.mul_(self.gamma), dim=0).mul_(c).add_((c - 1.0) * log_n)
        return finite_weights(log_w.exp_(), losses)

    def objective(self, losses: Tensor) -> Tensor:
        if math.isinf(self.gamma):
            return losses.amax() if self.gamma > 0 else losses.amin()
        return self.log_mean(losses).exp().to(losses.dtype)
