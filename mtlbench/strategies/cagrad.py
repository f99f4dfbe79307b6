"""CAGrad: the update that maximizes the worst task's improvement within a ball around the mean
gradient (Liu et al., 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

    max_d min_i g_i · d   s.t.  ||d − g_0|| ≤ c ||g_0||,   g_0 = (1/n) Σ_i g_i
    dual: w* = argmin_{w ∈ Δ} g_w · g_0 + c ||g_0|| ||g_w||,   g_w = Σ_i w_i g_i
    d = (g_0 + (c ||g_0|| / ||g_w*||) g_w*) / r,   i.e.  w_i = (1/n + c ||g_0|| w*_i / ||g_w*||) / r

with r = 1 (``rescale=0``), 1 + c² (``rescale=1``, the authors' and LibMTL's default) or 1 + c
(``rescale=2``): a constant step-size factor. torchjd's ``CAGradWeighting`` (cvxpy, CLARABEL)
returns the ``rescale=0`` weights; LibMTL's (scipy SLSQP) formula with ``rescale=1`` is those
divided by 1 + c² (the authors' code also multiplies the update by n "to match the sum loss").
c = 0 gives the mean. torchjd drops the correction term (all-zero weights) when ||g_w*|| is below
its ``norm_eps``; on the trace-normalized Gramian this strategy passes ``NORM_EPS`` = 1e-6, i.e.
||g_w*|| < 1e-6 · sqrt(tr G) (torchjd's default 1e-4 already switches for two nearly opposite
gradients, where the authors' formula still applies the correction; much lower would let the
solver's ~1e-9 residual, e.g. next to a zero gradient, pick the correction's direction). Below
it this strategy returns the mean weights 1/n / r — the authors' formula when g_w* = 0.
Paper: https://arxiv.org/abs/2110.14048.

Claims: not scale invariant (g_0 and the ball are not); with ``normalize`` it is. Shift invariant.
The dual is solved to the solver's tolerance (≈1e-8), not exactly.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
    c: ≥ 0, the ball's radius relative to ||g_0|| (0.5: LibMTL's default and that of the
        authors' ``cagrad()``; their NYUv2 script runs 0.4).
    rescale: 0, 1 or 2 (see above).
Returns weights [n] ≥ 1/(n r).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import Strategy, check_positive
from mtlbench.strategies.gramian_weighting import GramianWeighting

#: torchjd's threshold on ||g_w*|| relative to sqrt(tr G) (see the module docstring).
NORM_EPS = 1e-6
#: Largest ``c`` (its square, in ``rescale=1``'s divisor 1 + c², stays within float64).
MAX_C = 1e150


class CAGrad(GramianWeighting):
    """Conflict-averse update in a ball around the mean gradient (see module doc)."""

    name = "cagrad"
    solver = "cvxpy"

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None, c: float = 0.5,
                 rescale: int = 1) -> None:
        self.c = check_positive("c", c, allow_zero=True)
        if self.c > MAX_C:  # (1 + c² must stay finite)
            raise ConfigError(f"Parameter `c` must be at most {MAX_C:g}. Found `c = {c}`.")
        if isinstance(rescale, bool) or rescale not in (0, 1, 2):
            raise ConfigError(
                f"Parameter `rescale` must be one of 0, 1, 2. Found `rescale = {rescale}`."
            )
        self.rescale = int(rescale)
        self.divisor = (1.0, 1.0 + self.c ** 2, 1.0 + self.c)[self.rescale]
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        from torchjd.aggregation import CAGradWeighting

        return CAGradWeighting(c=self.c, norm_eps=NORM_EPS)

    def solve(self, gramian: Tensor) -> Tensor:
        w = super().solve(gramian)
        if not bool((w != 0).any()):
            w = torch.full_like(w, 1.0 / w.numel())
        return w / self.divisor
