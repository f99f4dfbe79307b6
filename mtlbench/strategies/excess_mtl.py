"""ExcessMTL: task weights raised by multiplicative (exponentiated-gradient) updates driven by each
task's estimated excess risk, its distance to convergence (He et al., "Robust Multi-Task Learning
with Excess Risks", ICML 2024, https://arxiv.org/abs/2402.02009, eq. 6-7 and 9, Section 3.2's scale
normalization), in the form of the authors' code (LibMTL's ``ExcessMTL``); a combiner.

With g_i = ∇L_i over all shared parameters at step t and an AdaGrad accumulator per task,

    A_i ← A_i + g_i ∘ g_i                                   (A_i = 0 before step 1; [P] per task)
    E_i = g_iᵀ diag(1 / sqrt(A_i + ε)) g_i                 (eq. 6-7; constant factors: in η)
    step 1:   E⁰ = E (the baseline), w = 1
    step > 1: r_i = E_i / E⁰_i,   w_i ← n · w_i exp(η r_i) / Σ_j w_j exp(η r_j)
    shared update d = Σ_i w_i g_i,   heads: w_i ∇L_i (``weighted``, as LibMTL's Σ_i w_i L_i)

so w starts at 1 and always sums to n (LibMTL's scale; the paper's simplex weights are w / n).
Dividing by the first step's estimate (Section 3.2) makes r_i free of the task's loss
scale; the paper's Appendix C.1 option of averaging the baseline over warm-up epochs is not used
(the authors' code and LibMTL take step 1). Defaults: η = 0.01 (``robust_step_size``), ε = 1e-7,
as LibMTL and the authors' code. The update is computed in log space (w ∝ exp(log w + η r)), which
equals the product form and saturates instead of overflowing. Where E⁰_i = 0 (a gradient of exactly
0 at step 1) the task's baseline is taken at its first step with E_i > 0 (r_i = 0 until then);
LibMTL would divide by 0 there. The accumulators (one [n, *p.shape] per shared parameter, in the
gradients' dtype and device), log w, the baseline and the step count are the checkpointed state;
``combine`` computes the step's new state and ``after_step`` keeps it, so a step the loop skips
(non-finite losses or gradients) neither counts nor leaves a nan in the accumulators.

Claims: shift invariant (the losses are not read); not scale invariant (w ignores the scale, so
scaling g_k scales its share of d). ``heads``: ``weighted`` (default) or ``unweighted`` (∇L_i).

Parameters:
    robust_step_size: η > 0. eps: ε > 0 inside the square root. heads: see above.
Returns (``combine``) the update per shared parameter and w [n] (sum n), logged as the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.base import (
    Combined,
    Combiner,
    PerTaskGradients,
    check_heads,
    check_positive,
    wide,
)


class ExcessMTL(Combiner):
    """Exponentiated-gradient task weights from AdaGrad excess-risk estimates (see module doc)."""

    shift_invariant = True

    def __init__(self, *, robust_step_size: float = 1e-2, eps: float = 1e-7,
                 heads: str = "weighted") -> None:
        self.robust_step_size = check_positive("robust_step_size", robust_step_size)
        self.eps = check_positive("eps", eps)
        self.heads = check_heads(heads)
        self.step = 0
        self.accumulators: list[Tensor] = []  # A: Σ_t g_i(t)², one [n, *p.shape] per parameter
        self.log_weights: Tensor | None = None  # log w [n], float64
        self.baseline: Tensor | None = None  # E⁰ [n], float64; 0 where not set yet
        self.pending: dict[str, Any] | None = None  # this step's state, kept by after_step

    def combine(self, losses: Tensor, grads: PerTaskGradients) -> Combined:
        per_task = grads.per_param
        n, device, dtype = per_task[0].shape[0], per_task[0].device, wide(per_task[0])
        if not self.accumulators:
            self.accumulators = [torch.zeros_like(g) for g in per_task]
            self.log_weights = torch.zeros(n, dtype=dtype, device=device)
            self.baseline = torch.zeros(n, dtype=dtype, device=device)
        elif self.accumulators[0].device != device:  # resumed from a CPU checkpoint
            self.accumulators = [a.to(device) for a in self.accumulators]
        assert self.log_weights is not None and self.baseline is not None
        log_w, baseline = self.log_weights.to(device), self.baseline.to(device)
        accumulators, risk = [], torch.zeros(n, dtype=dtype, device=device)
        for acc, g in zip(self.accumulators, per_task, strict=True):
            acc = acc.addcmul(g, g)
            accumulators.append(acc)
            risk += (g * (g / (acc + self.eps).sqrt())).reshape(n, -1).sum(dim=1, dtype=dtype)
        if self.step > 0:  # step 1 only sets the baseline (w = 1)
            ratio = torch.where(baseline > 0, risk / baseline, 0.0)
            log_w = log_w + (self.robust_step_size * ratio).clamp(max=torch.finfo(dtype).max / 4)
            log_w = log_w - log_w.max()
        baseline = torch.where((baseline == 0) & (risk > 0), risk, baseline)
        self.pending = {"step": self.step + 1, "accumulators": accumulators,
                        "log_weights": log_w, "baseline": baseline}
        w = n * torch.softmax(log_w, dim=0)
        update = [torch.tensordot(w.to(g.dtype), g, dims=1) for g in per_task]
        weights = w.to(dtype=losses.dtype, device=losses.device)
        return Combined(update, weights, weights if self.heads == "weighted" else None)

    def after_step(self, losses: Tensor) -> None:
        """Keep the state of the step just applied (a skipped, non-finite step leaves none)."""
        if self.pending is not None:
            self.load_state_dict(self.pending)
            self.pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "accumulators": list(self.accumulators),
                "log_weights": self.log_weights, "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.accumulators = list(state["accumulators"])
        self.log_weights, self.baseline = state["log_weights"], state["baseline"]
