"""Nash-MTL: the Nash bargaining solution between the tasks (Navon et al., 2022, "Multi-Task
Learning as a Bargaining Game").

    d = Σ_i α_i g_i   with   G α = 1/α   (elementwise; α > 0),

the bargaining solution for utilities u_i(d) = g_i · d on a ball ||d|| ≤ ε: every task's
improvement g_i · d = (G α)_i is 1/α_i. Orthogonal gradients give α_i = 1/||g_i||; at the solution
||d||² = αᵀ G α = n. Solved as in the paper and the authors' code by torchjd's ``NashMTL``
weighting: at most ``optim_niter`` convex programs (cvxpy, ECOS), each minimizing Σ_i (G α)_i plus
the linearization at the previous iterate of φ(α) = Σ_i log α_i + log (G α)_i, subject to
log α_i + log (G α)_i ≥ 0 and α ≥ 0, warm-started from the last solution (ones at first); that
reaches G α = 1/α to ≈1e-7 relative. Newton steps on α ⊙ (G α) = 1 then polish it while they
reduce the residual (≤ 8, α kept > 0): the same solution to rounding, so that the claims below
hold to rounding rather than to ECOS's tolerance. torchjd's weighting takes a matrix J and forms
J Jᵀ: it is given M = V Λ₊^½ from C = V Λ Vᵀ (M Mᵀ = C; a test checks it equals passing J).
Paper: https://arxiv.org/abs/2202.01017.

The condition is equivariant to task scales (S G S with S = diag(s) is solved by S⁻¹ α), so the
weights are always solved on the cosine matrix C and divided by ||g_i|| (``via_cosines``: the
same solution; the warm start is α for the unit gradients, where the authors keep α for the
gradients). A zero gradient cannot satisfy its equation: it gets an orthogonal unit row
(C_kk = 1, α_k = 1; it adds nothing). When ECOS fails (dependent gradients, e.g. g_2 = ±g_1) it
returns the previous α, as the authors' code; the polish then reaches the solution if there is
one (g_2 = g_1: α = 2^(-1/2) on C) and keeps α otherwise (g_2 = −g_1).

``max_norm`` > 0: when ||d|| = (wᵀ G w)^½ exceeds it, w is scaled to ||d|| = max_norm — the
authors' clip_grad_norm_ on the shared parameters, a function of G (of the gradients ``params``
names), so expressible as weights; with n ≥ 2 the default 1 rescales every solved update
(||d||² = n). Heads keep the unclipped α_i ∇L_i (``weighted``; the authors clip the shared part
only). ``update_weights_every`` k: α is solved every k-th call and reused (clipped anew) between.
The call counter, the last α and the solver's warm start are in ``state_dict`` (exact resume).
A non-finite G gives NaN weights (the loop skips that step) and leaves the state as it was.

Claims: scale invariant with ``weighted`` heads (task k's loss times λ gives α_k / λ, the others
and ||d|| unchanged: the whole update is the same, to rounding). Shift invariant. Deterministic.
``normalize`` changes nothing (C is used anyway).

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    update_weights_every: ≥ 1, solve every k-th call (authors and LibMTL: 1).
    optim_niter: ≥ 1, convex programs per solve at most (authors and LibMTL: 20).
    max_norm: ≥ 0, the update's largest norm; 0: no clip (authors and LibMTL: 1.0).
Returns weights [n] ≥ 0.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlbench.strategies.base import Strategy, check_heads, check_int, check_positive
from mtlbench.strategies.gramian_weighting import F64, GramianWeighting


def gramian_factor(gramian: Tensor) -> Tensor:
    """M [n, n] with M Mᵀ = G for a symmetric PSD G [n, n]: V Λ₊^½ from G = V Λ Vᵀ (negative
    eigenvalues, rounding, clamped to 0)."""
    values, vectors = torch.linalg.eigh(gramian)
    return vectors * values.clamp_min(0).sqrt()


def polished(gramian: Tensor, alpha: Tensor) -> Tensor:
    """Newton steps on F(α) = α ⊙ (G α) − 1 [n] from ``alpha`` [n] (Jacobian diag(G α) + diag(α) G)
    while they keep α > 0 and reduce max |F|."""
    residual = (alpha * (gramian @ alpha) - 1).abs().max()
    for _ in range(8):
        g_alpha = gramian @ alpha
        jacobian = torch.diag(g_alpha) + alpha[:, None] * gramian
        step = torch.linalg.lstsq(jacobian, 1 - alpha * g_alpha).solution
        new = alpha + step
        new_residual = (new * (gramian @ new) - 1).abs().max()
        if not (bool((new > 0).all()) and new_residual < residual):
            break
        alpha, residual = new, new_residual
    return alpha


class NashMTL(GramianWeighting):
    """Nash bargaining weights, G α = 1/α, optionally clipped (see module doc)."""

    name = "nash_mtl"
    solver = "cvxpy"
    via_cosines = True

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None, update_weights_every: int = 1,
                 optim_niter: int = 20, max_norm: float = 1.0) -> None:
        self.update_weights_every = check_int("update_weights_every", update_weights_every,
                                              minimum=1)
        self.optim_niter = check_int("optim_niter", optim_niter, minimum=1)
        self.max_norm = check_positive("max_norm", max_norm, allow_zero=True)
        self.scale_invariant = check_heads(heads) == "weighted"
        self.calls, self.clip = 0, 1.0
        self.alpha: Tensor | None = None  # last solved weights on the gradients, unclipped
        self.warm: Tensor | None = None  # the solver's last α on the unit gradients
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        from torchjd.aggregation import NashMTL as Torchjd

        Torchjd(n_tasks=1)  # raises ImportError without cvxpy / ecos
        return None  # torchjd's needs n_tasks: made in solve()

    def solve(self, gramian: Tensor) -> Tensor:
        from torchjd.aggregation import NashMTL as Torchjd

        n = gramian.shape[0]
        if n == 1:  # α² ||u||² = 1 (cvxpy's problem needs n ≥ 2)
            return torch.ones(1, dtype=F64)
        cos = gramian.clone()
        cos.diagonal()[cos.diagonal() <= 0] = 1.0
        if self.weighting is None or self.weighting.n_tasks != n:
            self.weighting = Torchjd(n_tasks=n, max_norm=0.0, update_weights_every=1,
                                     optim_niter=self.optim_niter).weighting
        if self.warm is not None and self.warm.shape == (n,):
            self.weighting.prvs_alpha = self.warm.numpy().copy()
        else:  # torchjd's own start (also after a restored state that had none: no trace)
            self.weighting.prvs_alpha = np.ones(n, dtype=np.float32)
        with warnings.catch_warnings():  # "... is not DPP" on every solve; 1/0 on a singular C
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="cvxpy")
            alpha = self.weighting(gramian_factor(cos)).to(F64)
        self.warm = torch.as_tensor(self.weighting.prvs_alpha, dtype=F64).clone()
        return polished(cos, alpha)

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        n = gramian.shape[0]
        if not bool(torch.isfinite(gramian).all()):  # cvxpy refuses it; the loop skips the step
            return torch.full((n,), float("nan"), dtype=F64)
        if (self.alpha is None or self.alpha.shape != (n,)
                or self.calls % self.update_weights_every == 0):
            self.alpha = super().gramian_weights(gramian)
        self.calls += 1
        norm = float((self.alpha @ gramian @ self.alpha).clamp_min(0).sqrt())
        self.clip = self.max_norm / norm if 0 < self.max_norm < norm else 1.0
        return self.alpha * self.clip

    def head_weights(self, losses: Tensor, weights: Tensor) -> Tensor | None:
        return weights / self.clip if self.heads == "weighted" else None

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "nash_calls": torch.tensor(self.calls)}
        for key, value in (("nash_alpha", self.alpha), ("nash_warm", self.warm)):
            if value is not None:
                state[key] = value.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.calls = int(state.get("nash_calls", 0))
        self.alpha, self.warm = (None if state.get(key) is None else state[key].to("cpu", F64)
                                 for key in ("nash_alpha", "nash_warm"))
