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

``ema_beta`` > 0 (with ``log_losses`` and ``rescale=max``: DB-MTL, Lin et al. 2023, "Dual-Balancing
for Multi-Task Learning", https://arxiv.org/abs/2308.12029): per-task moving averages of gradient
*vectors*, ĝ_i ← β_t ĝ_i + (1 − β_t) h_i with h_i = ∇_θ log L_i (or ∇_θ L_i), β_t = β / t^σ
(``ema_sigma`` σ; ĝ starts at 0 as in the reference implementation), and the shared update
s · Σ_i ĝ_i / ||ĝ_i|| with s from the ||ĝ_j||. No per-step weights over this step's gradients can
express that, so the strategy then uses the protocol's ``combine_gradients`` hook (needs
``params=shared``). ``heads=unweighted`` gives head i the plain ∇ log L_i (or ∇L_i), as DB-MTL does;
``heads=normalized`` (default) scales it like the task's shared gradient, s / ||ĝ_i||.

Numerics: the loop's norms come from a Gramian whose squares neither overflow nor underflow
(``gradients.gramian``: float64, or float32 where that is exact), the moving average's norms
likewise, and no positive norm or loss is floored; so the invariances hold for gradients and losses
of any magnitude the model's dtype represents. Zero gradients: a norm ||h_i|| of exactly 0 counts
as ``eps`` (default 1e-8, the DB-MTL reference's constant), so such a task contributes nothing to θ
and its head gets the finite weight s / (eps c_i); positive norms, however small, are used as they
are (in float32, a norm whose reciprocal would overflow counts as 0). If every norm is 0, s is taken
as eps: w_i = 1 / c_i with ``rescale`` ``mean``/``max`` (the plain sum, whose shared gradient is 0
anyway), 1 / (eps c_i) with ``none``. With ``log_losses``, a loss of exactly 0 is replaced by
``LOSS_FLOOR`` = 1e-12 (``base.floored``). Weights beyond the losses' dtype are clamped to its
largest finite value.

Parameters:
    params: ``shared`` (all backbone parameters, the exact form), ``last_shared`` (the last shared
        layer, GradNorm's cheap stand-in) or ``representation`` (∂L_i/∂z at the representation z
        [B, D] fed to the heads, MGDA-UB's approximation). Sets ``gradient_source``.
    rescale: ``none``, ``mean`` or ``max``.
    log_losses: normalize ∇ log L_i instead of ∇ L_i (same direction; see above).
    ema_beta: β in [0, 1); 0 disables the moving average.
    ema_sigma: σ ≥ 0 in β_t = β / t^σ.
    heads: ``normalized`` or ``unweighted`` (only with the moving average / combine path).
    eps: > 0, the stand-in for a norm of exactly 0 (see above); positive norms are never floored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import (
    GRADIENT_SOURCES,
    GradientStats,
    Strategy,
    check_choice,
    check_real,
    finite_weights,
    float32_is_safe,
    floored,
    wide,
)

RESCALES = ("none", "mean", "max")
HEADS = ("normalized", "unweighted")


class GradNormIdeal(Strategy):
    """Normalize each task's shared gradient to unit norm, then add (eq. 10-11); see module doc."""

    needs_gradients = True
    scale_invariant = True
    shift_invariant = True

    def __init__(self, *, params: str = "shared", rescale: str = "none", log_losses: bool = False,
                 ema_beta: float = 0.0, ema_sigma: float = 0.0, heads: str = "normalized",
                 eps: float = 1e-8) -> None:
        self.gradient_source = check_choice("params", params, GRADIENT_SOURCES)
        self.rescale = check_choice("rescale", rescale, RESCALES)
        if not isinstance(log_losses, bool):
            raise ConfigError(
                f"Parameter `log_losses` must be true or false. Found `log_losses = {log_losses}`."
            )
        self.log_losses = log_losses
        self.ema_beta = check_real("ema_beta", ema_beta)
        if not 0.0 <= self.ema_beta < 1.0:
            raise ConfigError(
                f"Parameter `ema_beta` must be in [0, 1). Found `ema_beta = {ema_beta}`."
            )
        self.ema_sigma = check_real("ema_sigma", ema_sigma)
        if self.ema_sigma < 0:
            raise ConfigError(
                f"Parameter `ema_sigma` must be >= 0. Found `ema_sigma = {ema_sigma}`."
            )
        self.heads = check_choice("heads", heads, HEADS)
        self.eps = check_real("eps", eps)
        if self.eps <= 0:
            raise ConfigError(f"Parameter `eps` must be > 0. Found `eps = {eps}`.")
        self.combines_gradients = self.ema_beta > 0 or self.heads == "unweighted"
        if self.combines_gradients and self.gradient_source != "shared":
            raise ConfigError(
                "Parameters `ema_beta` > 0 and `heads = unweighted` need `params = shared` (a "
                f"moving average of gradient vectors needs them all). Found `params = {params}`."
            )
        # Invariance of the whole update (heads included): the shared direction always is; the
        # heads of ``heads=unweighted`` get ∇L_i (not scale-invariant) or ∇log L_i (not
        # shift-invariant), and the moving average of ∇log L_i mixes steps with weights 1/L_i(t).
        self.scale_invariant = not (self.heads == "unweighted" and not self.log_losses)
        self.shift_invariant = not (self.combines_gradients and self.log_losses)
        self.step = 0
        self.buffer: list[Tensor] = []

    # ------------------------------------------------------------------ weights over g_i (eq. 11)
    def _divisors(self, losses: Tensor) -> Tensor | None:
        """c_i with h_i = g_i / c_i the gradient being normalized: L_i (``log_losses``; zero losses
        floored) as float64 [n], or None for c_i = 1."""
        return floored(losses).to(wide(losses)) if self.log_losses else None

    def _scale(self, norms: Tensor) -> Tensor | None:
        """s from the norms ||h_j|| [n]: None for ``none`` (s = 1); eps if they are all 0."""
        if self.rescale == "none":
            return None
        s = norms.mean() if self.rescale == "mean" else norms.max()
        return torch.where(s > 0, s, self.eps)

    def _normalizers(self, norms: Tensor, dtype: torch.dtype) -> Tensor:
        """s / ||h_i|| [n] in ``dtype`` from the norms ||h_i|| ≥ 0 [n]; a norm of exactly 0 (or
        whose reciprocal overflows ``dtype``) counts as eps."""
        a = norms.to(dtype).reciprocal().nan_to_num_(posinf=1.0 / self.eps)
        s = self._scale(norms)
        if s is None:
            return a
        return a.mul_(s).clamp_(max=torch.finfo(dtype).max)

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        """w_i = s / ||h_i|| / c_i [n] from ``grads.norms`` = ||∇_θ L_i|| [n] (= s / ||g_i|| for
        nonzero norms), in the losses' dtype (with ``log_losses``: computed in float64).

        With ``combines_gradients`` the loop calls :meth:`combine_gradients` instead; this is then
        the shared part's weighting without the moving average's history."""
        assert grads is not None, "gradnorm_ideal needs gradient statistics"
        norms = grads.norms.to(device=losses.device)
        c = self._divisors(losses)
        if c is None:
            return self._normalizers(norms, losses.dtype)
        a = self._normalizers(norms.to(c.dtype) / c, c.dtype)
        return finite_weights(a.div_(c), losses)

    # ------------------------------------------------------------------ DB-MTL moving average
    def combine_gradients(self, losses: Tensor,
                          per_task: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Moving average of h_i = ∇_θ L_i / c_i per shared parameter, then s · Σ_i ĝ_i / ||ĝ_i||.

        ``per_task``: ∇_p L_i [n, *p.shape] per shared parameter p. Returns head weights [n] and the
        update per parameter (see the module docstring). The norms ||ĝ_i|| are accumulated in
        float64 where float32 squares could over- or underflow (``base.float32_is_safe``).
        """
        self.step += 1
        beta = self.ema_beta / self.step ** self.ema_sigma
        c = self._divisors(losses)
        if not self.buffer:
            self.buffer = [torch.zeros_like(g) for g in per_task]
        elif self.buffer[0].device != per_task[0].device:  # resumed from a CPU checkpoint
            self.buffer = [b.to(g.device) for b, g in zip(self.buffer, per_task, strict=True)]
        n, like = losses.numel(), self.buffer[0]
        coef = None if c is None else finite_weights((1.0 - beta) / c, like)  # (1 - β_t) / c_i
        for buf, g in zip(self.buffer, per_task, strict=True):
            if coef is None:
                buf.mul_(beta).add_(g, alpha=1.0 - beta)
            else:
                buf.mul_(beta).add_(g * coef.view((-1,) + (1,) * (g.dim() - 1)))
        # float32 squares on the CPU when none can have over- or underflowed, else float64
        sq = self._squared_norms(n, torch.float32) if like.dtype == torch.float32 and \
            like.device.type == "cpu" else None
        if sq is None or not float32_is_safe(sq):
            sq = self._squared_norms(n, wide(like))
        a = self._normalizers(sq.sqrt_(), wide(like))  # coefficient of ĝ_i
        a_like = finite_weights(a, like)
        update = [torch.tensordot(a_like, b, dims=1) for b in self.buffer]
        if self.heads == "unweighted":
            head = torch.ones_like(a) if c is None else c.reciprocal()
        else:
            head = a if c is None else a / c
        return finite_weights(head, losses), update

    def _squared_norms(self, n: int, dtype: torch.dtype) -> Tensor:
        """||ĝ_i||² [n] over all shared parameters, accumulated in ``dtype``."""
        sq = None
        for buf in self.buffer:
            part = torch.linalg.vector_norm(buf.reshape(n, -1), dim=1, dtype=dtype)
            sq = part.square_() if sq is None else sq.addcmul_(part, part)
        assert sq is not None, "no shared parameters"
        return sq

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.buffer = list(state.get("buffer", []))
