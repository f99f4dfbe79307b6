"""The post's "ideal target": gradient normalization, eq. (10)-(11); with options, DB-MTL.

    L = Σ_i L_i / sg(||∇_θ L_i||)                       (10)
    ∇_θ L = Σ_i ∇_θ L_i / ||∇_θ L_i||                   (11)

so the effective weight is w_i = s / ||g_i||, g_i = ∇_θ L_i over the shared parameters θ; the head
of task i receives w_i ∇L_i (the same factor, as eq. 10 implies). The gradient norm is
shift-invariant and the ratio homogeneous, so the update direction is invariant to L_i → λ L_i + c.
Source: https://kexue.fm/archives/8870 (eq. 10-11).

``rescale`` (s): ``none`` (s = 1, eq. 11 as written; the whole update, heads included, is then
invariant to λ and c), ``mean`` (s = mean_j ||g_j||: the post's remark for SGD, keeps the step
size of the plain sum) or ``max`` (s = max_j ||g_j||, as DB-MTL). The rescaled directions stay
invariant; only the step length follows the norms.

``log_losses``: normalize the gradients of log L_i (eq. 6) instead of L_i. Since
∇ log L_i = ∇L_i / L_i, the normalized direction g_i / ||g_i|| is *the same*; only ``rescale`` (the
norms ||g_j|| / L_j enter s) and the moving average below differ. Effective weight on L_i:
w_i = s / ||g_i||, with s from ||∇ log L_j||.

``heads``: ``weighted`` (default: head i receives w_i ∇L_i, as eq. 10 implies) or ``unweighted``
(head i receives the gradient of its own transformed loss: ∇L_i, or ∇ log L_i = ∇L_i / L_i with
``log_losses``, as DB-MTL trains them). DB-MTL's moving average of gradient *vectors* is the
combiner ``db_mtl`` (``mtlbench/strategies/db_mtl.py``), which reuses this file's normalizers.

Numerics: the loop's norms come from a Gramian whose squares neither overflow nor underflow
(``gradients.gramian``: float64, or float32 where that is exact), the moving average's norms
likewise, and no positive norm or loss is floored; so the invariances hold for gradients and losses
of any magnitude the model's dtype represents. Zero gradients: a norm ||h_i|| of exactly 0 counts
as ``eps`` (default 1e-8, the DB-MTL reference's constant), so such a task contributes nothing to θ
and its head gets the finite weight s / (eps c_i); positive norms, however small, are used as they
are (in float32, a norm whose reciprocal would overflow counts as 0). If every norm is 0, s is taken
as eps: w_i = 1 / c_i with ``rescale`` ``mean``/``max`` (the plain sum, whose shared gradient is 0
anyway), 1 / (eps c_i) with ``none``. With ``log_losses``, a loss of exactly 0 is replaced by
``LOSS_FLOOR`` = 2⁻²³ (``base.floored``). Weights beyond the losses' dtype are clamped to its
largest finite value.

Parameters:
    params: ``shared`` (all backbone parameters, the exact form), ``last_shared`` (the last shared
        layer, GradNorm's cheap stand-in) or ``representation`` (∂L_i/∂z at the representation z
        [B, D] fed to the heads, MGDA-UB's approximation). Sets ``gradient_source``.
    rescale: ``none``, ``mean`` or ``max``.
    log_losses: normalize ∇ log L_i instead of ∇ L_i (same direction; see above).
    heads: ``weighted`` or ``unweighted`` (see above).
    eps: > 0, the stand-in for a norm of exactly 0 (see above); positive norms are never floored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.strategies.base import (
    GRADIENT_SOURCES,
    GradientStats,
    GradientWeighting,
    Strategy,
    check_bool,
    check_choice,
    check_heads,
    check_positive,
    finite_weights,
    floored,
    stacked,
    wide,
)

RESCALES = ("none", "mean", "max")


class GradNormIdeal(GradientWeighting):
    """Normalize each task's shared gradient to unit norm, then add (eq. 10-11); see module doc."""

    scale_invariant = True
    shift_invariant = True
    separable = True  # w_i = s · (1 / ||h_i|| / c_i): the loop may add up h_i g_i task by task

    def __init__(self, *, params: str = "shared", rescale: str = "none", log_losses: bool = False,
                 heads: str = "weighted", eps: float = 1e-8,
                 loss_weighting: Strategy | None = None) -> None:
        self.gradient_source = check_choice("params", params, GRADIENT_SOURCES)
        self.rescale = check_choice("rescale", rescale, RESCALES)
        self.log_losses = check_bool("log_losses", log_losses)
        self.heads = check_heads(heads)
        self.eps = check_positive("eps", eps)
        # Invariance of the whole update (heads included): the shared direction always is; the
        # heads of ``heads=unweighted`` get ∇L_i (not scale invariant) or ∇ log L_i = ∇L_i / L_i
        # (scale invariant, not shift invariant).
        unweighted = self.heads == "unweighted"
        self.scale_invariant = not (unweighted and not self.log_losses)
        self.shift_invariant = not (unweighted and self.log_losses)
        self.loss_weighting = stacked(loss_weighting, self)

    # ------------------------------------------------------------------ weights over g_i (eq. 11)
    def divisors(self, losses: Tensor) -> Tensor | None:
        """c_i with h_i = g_i / c_i the gradient being normalized: L_i (``log_losses``; zero losses
        floored) as float64 [n], or None for c_i = 1."""
        return floored(losses).to(wide(losses)) if self.log_losses else None

    def _scale(self, norms: Tensor) -> Tensor | None:
        """s from the norms ||h_j|| [n]: None for ``none`` (s = 1); eps if they are all 0."""
        if self.rescale == "none":
            return None
        s = norms.mean() if self.rescale == "mean" else norms.max()
        return torch.where(s > 0, s, self.eps)

    def _reciprocals(self, norms: Tensor, dtype: torch.dtype) -> Tensor:
        """1 / ||h_i|| in ``dtype``; a norm of exactly 0 (or whose reciprocal overflows ``dtype``)
        counts as eps."""
        return norms.to(dtype).reciprocal().nan_to_num_(posinf=1.0 / self.eps)

    def normalizers(self, norms: Tensor, dtype: torch.dtype) -> Tensor:
        """s / ||h_i|| [n] in ``dtype`` from the norms ||h_i|| ≥ 0 [n] (:meth:`_reciprocals`)."""
        a = self._reciprocals(norms, dtype)
        s = self._scale(norms)
        if s is None:
            return a
        return a.mul_(s).clamp_(max=torch.finfo(dtype).max)

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        """w_i = s / ||h_i|| / c_i [n] from ``grads.norms`` = ||∇_θ L_i|| [n] (= s / ||g_i|| for
        nonzero norms), in the losses' dtype (with ``log_losses``: computed in float64)."""
        assert grads is not None, "gradnorm_ideal needs gradient statistics"
        norms = grads.norms.to(device=losses.device)
        return self.separated_weights(losses, self.own_factors(losses, norms),
                                      self.common_factor(losses, norms))

    def own_factors(self, losses: Tensor, norms: Tensor) -> Tensor:
        """1 / ||h_i|| / c_i [k] (||h_i|| = ||g_i|| / c_i; a norm of 0, or whose reciprocal
        overflows, counts as eps), in the losses' dtype (``log_losses``: float64)."""
        c = self.divisors(losses)
        if c is None:
            return self._reciprocals(norms, losses.dtype)
        return self._reciprocals(norms.to(c.dtype) / c, c.dtype).div_(c)

    def common_factor(self, losses: Tensor, norms: Tensor) -> Tensor | None:
        """s from the norms ||h_j|| [n] (None for ``rescale=none``)."""
        c = self.divisors(losses)
        return self._scale(norms if c is None else norms.to(c.dtype) / c)

    def head_weights(self, losses: Tensor, weights: Tensor) -> Tensor | None:
        """``weighted``: w_i; ``unweighted``: 1 / L_i with ``log_losses`` (head i gets
        ∇ log L_i), else None (∇L_i)."""
        if self.heads == "weighted":
            return weights
        c = self.divisors(losses)
        return None if c is None else finite_weights(c.reciprocal(), losses)
