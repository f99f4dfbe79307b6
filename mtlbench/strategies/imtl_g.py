"""IMTL-G: the update whose projections on every unit task gradient are equal (Liu et al., 2021,
"Towards Impartial Multi-task Learning", the gradient half of IMTL).

    d = Σ_i α_i g_i   with   d · u_1 = … = d · u_n  (u_i = g_i / ||g_i||)   and   Σ_i α_i = 1,
    α = G⁺ ||g|| / (1ᵀ G⁺ ||g||) = D⁻¹ C⁺ 1 / (1ᵀ D⁻¹ C⁺ 1)       (D = diag ||g_i||, C = D⁻¹ G D⁻¹)

(||g|| the vector of norms; G⁺ the pseudo-inverse, torchjd's generalization to dependent
gradients). Weights may be negative (n ≥ 3). Computed with torchjd's ``IMTLGWeighting`` on the
cosine matrix C (``via_cosines``: identical to G⁺||g|| for linearly independent gradients, and
conditioned independently of the norms' spread), then divided by ||g_i|| and renormalized.
Paper: https://openreview.net/forum?id=IMPnRXEWpvr (LibMTL's ``IMTL`` adds the loss-scale half,
IMTL-L, which is not part of this strategy).

Claims: the *direction* of d is invariant to scaling one task's loss, but the published
normalization Σ_i α_i = 1 is not: when some α'_i = (C⁺1)_i < 0, scaling that task's loss down
makes Σ_i α'_i / ||g_i|| negative, and dividing by it flips d to an ascent direction for every task
(a third of random 3-5-task Gramians have such a weight). So ``scale_invariant`` holds only with
``normalize``: the weights on the unit gradients then sum to 1 (w = α' / ||g||, α' = C⁺1 / 1ᵀC⁺1,
1ᵀC⁺1 ≥ 0), the same d up to a positive factor where the published one does not flip.
Shift invariant.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weights α'_i / ||g_i|| with Σ_i α'_i = 1 instead of Σ_i α_i = 1.
Returns weights [n] (1/n if every gradient is 0; zeros, as torchjd, when C⁺1 sums to 0, e.g. for
two opposite gradients).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.gramian_weighting import GramianWeighting


class IMTLG(GramianWeighting):
    """Equal projection on every unit task gradient, weights summing to 1 (see module doc)."""

    name = "imtl_g"
    nonnegative_weights = False
    via_cosines = True

    # no hyperparameters of its own: GramianWeighting.__init__ (params, normalize, heads,
    # cr_mogm, loss_weighting)

    def build(self) -> Any:
        from torchjd.aggregation import IMTLGWeighting

        return IMTLGWeighting()

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        if not bool((gramian.diagonal() > 0).any()):  # every d satisfies the condition: the mean
            return torch.full_like(gramian[0], 1.0 / gramian.shape[0])
        w = super().gramian_weights(gramian)  # α' / ||g|| (Σ α' = 1)
        if self.normalize:
            return w
        total = w.sum()
        if not total.abs() > 1e-12 * w.abs().sum():
            return torch.zeros_like(w)
        return w / total
