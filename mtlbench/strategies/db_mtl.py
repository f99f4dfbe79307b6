"""DB-MTL: log losses, a moving average of gradient *vectors*, max-norm rescaling (Lin et al. 2023,
"Dual-Balancing for Multi-Task Learning", https://arxiv.org/abs/2308.12029); a combiner.

With h_i = ∇_θ log L_i = g_i / L_i (eq. 6 of the post: the loss balance) over the shared θ,

    ĝ_i ← β_t ĝ_i + (1 − β_t) h_i,   β_t = β / t^σ   (ĝ_i = 0 before step 1, as the authors' code)
    d = s Σ_i ĝ_i / ||ĝ_i||,          s = max_j ||ĝ_j||  (eq. 11's normalization: gradient balance)

No weights over this step's gradients express d (ĝ mixes steps), so the loop hands the strategy
the per-task gradients of every shared parameter and writes d to θ. Logged
``train/weight/<task>``: a_i = s / ||ĝ_i||, the coefficient of ĝ_i in d. Heads: ``unweighted``
(default, as the reference implementation: head i receives ∇ log L_i = ∇L_i / L_i) or
``weighted`` (a_i ∇L_i / L_i, scaled like the task's shared direction).

Defaults are the authors' code's (LibMTL ``DB_MTL``: β = 0.9, ``DB_beta_sigma`` σ = 0, i.e. a
constant β_t; the paper's β_t = β / t^σ with σ = 0.5 is ``ema_sigma: 0.5``). A norm of exactly 0
counts as ``eps`` (1e-8, the reference's constant); zero losses are floored (``base.floored``);
norms of the averages are accumulated in float64 where float32 squares could over- or underflow.

Claims: scale invariant (∇ log(λ L_i) = ∇ log L_i); not shift invariant (1/L_i changes).

Parameters:
    ema_beta: β in [0, 1); 0: no averaging (then d is ``gradnorm_ideal`` with log losses, max).
    ema_sigma: σ ≥ 0 in β_t = β / t^σ.
    heads: ``unweighted`` or ``weighted``.
    eps: > 0, the stand-in for a norm of exactly 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import (
    FLOAT32_CHUNK,
    Combined,
    Combiner,
    PerTaskGradients,
    check_heads,
    check_positive,
    check_real,
    finite_weights,
    float32_is_safe,
    wide,
)
from mtlbench.strategies.gradnorm_ideal import GradNormIdeal


class DBMTL(Combiner):
    """s · Σ_i ĝ_i / ||ĝ_i|| over moving averages of ∇ log L_i (see module doc)."""

    scale_invariant = True

    def __init__(self, *, ema_beta: float = 0.9, ema_sigma: float = 0.0,
                 heads: str = "unweighted", eps: float = 1e-8) -> None:
        self.ema_beta = check_real("ema_beta", ema_beta)
        if not 0.0 <= self.ema_beta < 1.0:
            raise ConfigError(
                f"Parameter `ema_beta` must be in [0, 1). Found `ema_beta = {ema_beta}`."
            )
        self.ema_sigma = check_positive("ema_sigma", ema_sigma, allow_zero=True)
        self.heads = check_heads(heads)
        self.balance = GradNormIdeal(rescale="max", log_losses=True, eps=check_positive("eps", eps))
        self.step = 0
        self.buffer: list[Tensor] = []

    def combine(self, losses: Tensor, grads: PerTaskGradients) -> Combined:
        self.step += 1
        beta = self.ema_beta / self.step ** self.ema_sigma
        per_task = grads.per_param
        if not self.buffer:
            self.buffer = [torch.zeros_like(g) for g in per_task]
        elif self.buffer[0].device != per_task[0].device:  # resumed from a CPU checkpoint
            self.buffer = [b.to(g.device) for b, g in zip(self.buffer, per_task, strict=True)]
        c = self.balance.divisors(losses)  # L_i (floored), float64
        assert c is not None
        like = self.buffer[0]
        coef = finite_weights((1.0 - beta) / c, like)  # (1 − β_t) / L_i
        for buf, g in zip(self.buffer, per_task, strict=True):
            buf.mul_(beta).add_(g * coef.view((-1,) + (1,) * (g.dim() - 1)))
        a = self.balance.normalizers(self.squared_norms().sqrt_(), wide(like))  # s / ||ĝ_i||
        a_like = finite_weights(a, like)
        update = [torch.tensordot(a_like, b, dims=1) for b in self.buffer]
        head = c.reciprocal() if self.heads == "unweighted" else a / c
        return Combined(update, finite_weights(a, losses), finite_weights(head, losses))

    def squared_norms(self) -> Tensor:
        """||ĝ_i||² [n] over all shared parameters: float32 on the CPU when no square can have
        over- or underflowed (``base.float32_is_safe``), else float64."""
        like = self.buffer[0]
        if like.dtype == torch.float32 and like.device.type == "cpu":
            sq = self._squared_norms(torch.float32)
            if float32_is_safe(sq):
                return sq.double()
        return self._squared_norms(wide(like))

    def _squared_norms(self, dtype: torch.dtype) -> Tensor:
        """Per task, Σ over parameters and over pieces of at most ``FLOAT32_CHUNK`` entries of the
        squared norm (one float32 norm over a ResNet-18 conv layer's 2.4M entries is 3.7e-5 off;
        in pieces, 2e-7)."""
        n, sq = self.buffer[0].shape[0], None
        for buf in self.buffer:
            for piece in buf.reshape(n, -1).split(FLOAT32_CHUNK, dim=1):
                part = torch.linalg.vector_norm(piece, dim=1, dtype=dtype)
                sq = part.square_() if sq is None else sq.addcmul_(part, part)
        assert sq is not None, "no shared parameters"
        return sq

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.buffer = list(state.get("buffer", []))
