"""Random loss weighting (RLW): every step, weights drawn at random (Lin et al., "Reasonable
Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022,
https://arxiv.org/abs/2111.10603; LibMTL's ``RLW``).

    λ ~ p(λ),   w = softmax(λ),   L = Σ_i w_i L_i   (w is not differentiated)

with p = N(0, I) (``distribution=normal``, the paper's and LibMTL's default), or p = Dirichlet(1),
uniform on the simplex (``distribution=dirichlet``, w = λ directly). The draw uses torch's global
generator, which checkpoints save, so a resumed run draws the same weights.
``deterministic = False``: two calls give different weights (no exact permutation check).
Not scale-invariant (the weights ignore the losses' size); shift-invariant (they ignore the losses).

Parameters:
    distribution: ``normal`` (w = softmax(λ), λ ~ N(0, I_n)) or ``dirichlet`` (w ~ Dir(1_n)).
Returns weights [n] on the simplex (sum 1), in the losses' dtype and device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.strategies.base import GradientStats, Strategy, check_choice

DISTRIBUTIONS = ("normal", "dirichlet")


class RLW(Strategy):
    """Random weights on the simplex, drawn anew every step (see module doc)."""

    shift_invariant = True
    deterministic = False

    def __init__(self, *, distribution: str = "normal") -> None:
        self.distribution = check_choice("distribution", distribution, DISTRIBUTIONS)
        self.last: Tensor | None = None

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        n = losses.numel()
        if self.distribution == "normal":
            w = torch.softmax(torch.randn(n, dtype=torch.float64), dim=0)
        else:  # Dir(1): normalized standard exponentials
            e = torch.empty(n, dtype=torch.float64).exponential_()
            w = e / e.sum()
        self.last = w.to(dtype=losses.dtype, device=losses.device)
        return self.last

    def objective(self, losses: Tensor) -> Tensor:
        """Σ_i w_i L_i with the weights of the last :meth:`weights` call (drawn now if none)."""
        w = self.last if self.last is not None else self.weights(losses.detach())
        return (w.to(losses.dtype) * losses).sum()
