"""ConFIG: the conflict-free direction at equal angles to every task gradient, as long as the
gradients' projections on it (Liu et al., 2024, "ConFIG: Towards Conflict-free Training of Physics
Informed Neural Networks", eq. 2).

With unit gradients u_i = g_i / ||g_i|| (rows of U) and their cosine matrix C = U Uᵀ:

    g_u = U⁺ 1 = Uᵀ C⁺ 1 = Σ_i v_i u_i,   v = C⁺ 1   (the min-norm least-squares u_i · g_u = 1)
    d = (Σ_i g_i · ĝ_u) ĝ_u,   ĝ_u = g_u / ||g_u||
    w_i = s v_i / ||g_i||,   s = Σ_i ||g_i|| (C v)_i / vᵀ C v

(||g_u||² = vᵀ C v and g_i · g_u = ||g_i|| (C v)_i), so the update is a function of G. For
linearly independent gradients C v = 1: u_i · ĝ_u is the same for every i (equal angles,
g_i · d > 0) and s = Σ_i ||g_i|| / 1ᵀ C⁺ 1 > 0. The direction is IMTL-G's (∝ D⁻¹ C⁺ 1); the weights
can be negative for n ≥ 3. For 2 tasks the authors' shortcut (``ConFIG_update_double``) gives the
same direction, the bisector of u_1 and u_2. C⁺ is torch's pseudo-inverse (eigenvalues below
n · eps of the largest count as 0); when ||g_u||² ≤ 1e-20 (1 orthogonal to the range of C, e.g.
g_2 = −g_1; the authors' unit_vector(0) is 0) the weights are 0. A zero gradient has a zero row
in C, so v_k = w_k = 0.
Paper: https://arxiv.org/abs/2408.11104 (eq. 2 with equal direction weights and the projection
length, the defaults of the authors' ``ConFIG_update``).

Claims: scaling task k's loss by λ leaves C, v and ĝ_u unchanged and changes only the length
(through ||g_k||): w(λ) · s = c · w with c > 0 when C v = 1, so the whole update keeps its
direction — scale invariant with ``weighted`` heads. The authors train the heads with their own
∇L_i (``unweighted``, the default), which scale with λ: not claimed then. Shift invariant.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: ConFIG on the unit gradients (the length becomes Σ_i u_i · ĝ_u).
Returns weights [n] (may be negative).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.base import Strategy, check_heads
from mtlbench.strategies.gramian_weighting import GramianWeighting, cosine_matrix


def config_weights(gramian: Tensor) -> Tensor:
    """w [n] with Σ_i w_i g_i the ConFIG update, from a float64 Gramian [n, n] (NaN if it is not
    finite: the loop skips that step)."""
    if not bool(torch.isfinite(gramian).all()):
        return torch.full_like(gramian[0], float("nan"))
    cos, inv = cosine_matrix(gramian)
    v = torch.linalg.pinv(cos, hermitian=True) @ torch.ones_like(inv)
    cv = cos @ v
    length_sq = v @ cv  # ||g_u||²
    if not length_sq > 1e-20:
        return torch.zeros_like(v)
    norms = gramian.diagonal().clamp_min(0).sqrt()
    return (norms @ cv) / length_sq * v * inv


class ConFIG(GramianWeighting):
    """Equal-angle direction with the projection length (see module doc)."""

    name = "config_grad"
    nonnegative_weights = False

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None) -> None:
        self.scale_invariant = check_heads(heads) == "weighted"
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        return config_weights
