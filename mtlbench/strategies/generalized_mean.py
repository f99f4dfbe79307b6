"""Generalized (power) mean of the losses, eq. (8)-(9).

    L(γ) = ( (1/n) Σ_i L_i^γ )^(1/γ),   w_i = ∂L/∂L_i = (1/n) (L_i / L(γ))^(γ-1)

γ = 1 is the arithmetic mean (equal weights, eq. 1), γ → 0 the geometric mean (eq. 7), γ → +∞ the
maximum and γ → -∞ the minimum (eq. 9); L(γ) increases with γ. Larger γ focuses on the worst task.
Computed in float64 log space (log L(γ) = (logsumexp(γ log L) - log n) / γ), so losses from 0 to
1e8 and |γ| up to 1e6 give finite weights. Source: https://kexue.fm/archives/8870 (eq. 8-9).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlbench.strategies.base import GradientStats, Strategy, check_real, floored


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
        """log L(γ) for ``losses`` [n] (floored at ``LOSS_FLOOR``), in float64."""
        return self._log_mean(floored(losses.double()).log())

    def _log_mean(self, log_l: Tensor) -> Tensor:
        if self.gamma == 0:
            return log_l.mean()
        if math.isinf(self.gamma):
            return log_l.max() if self.gamma > 0 else log_l.min()
        return (torch.logsumexp(self.gamma * log_l, dim=0) - math.log(log_l.numel())) / self.gamma

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        if math.isinf(self.gamma):
            extreme = losses.max() if self.gamma > 0 else losses.min()
            hit = (losses == extreme).to(losses.dtype)
            return hit / hit.sum()
        if self.gamma == 1:
            return torch.full_like(losses, 1.0 / losses.numel())  # the arithmetic mean, eq. (1)
        log_l = floored(losses.double()).log_()
        log_n = math.log(losses.numel())
        if self.gamma == 0:  # w_i = (1/n) · L(0) / L_i
            return (log_l.mean() - log_l - log_n).exp_().to(losses.dtype)
        # (L_i / L(γ))^γ = n·s_i with s = softmax(γ log L), so log w_i = c·log s_i + (c-1)·log n,
        # c = (γ-1)/γ: the same value in fewer ops (this runs every step)
        c = (self.gamma - 1.0) / self.gamma
        log_w = torch.log_softmax(log_l.mul_(self.gamma), dim=0).mul_(c).add_((c - 1.0) * log_n)
        return log_w.exp_().to(losses.dtype)

    def objective(self, losses: Tensor) -> Tensor:
        if math.isinf(self.gamma):
            return losses.amax() if self.gamma > 0 else losses.amin()
        return self.log_mean(losses).exp().to(losses.dtype)
