"""GradVac (Gradient Vaccine): raise each pair's gradient similarity to its moving-average target,
in a random order, then add (Wang et al., 2021, "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", Algorithm 1; whole-model granularity).

    for each i:  p_i ← g_i;  for j ≠ i in a random order:
                     φ_ij = cos(p_i, g_j)
                     if φ_ij < φ̂_ij:  p_i ← p_i + ||p_i|| (φ̂_ij √(1−φ_ij²) − φ_ij √(1−φ̂_ij²))
                                                   / (||g_j|| √(1−φ̂_ij²)) · g_j
                     φ̂_ij ← (1 − β) φ̂_ij + β φ_ij          (φ̂ = 0 before the first step)
    d = Σ_i p_i = Σ_i w_i g_i

The correction gives cos(p_i, g_j) = φ̂_ij exactly. Tracking p_i = Σ_k c_ik g_k, every quantity is
a function of G (p_i · g_j = (c_i G)_j, ||p_i||² = c_i G c_iᵀ) and w = Σ_i c_i; c_ij ≥ 0, so w ≥ 1.
β = 0 keeps φ̂ = 0: PCGrad with the same orders. A pair with a zero p_i or g_j (no cosine) is
skipped (no correction, φ̂ kept); a target φ̂ = ±1 (√(1−φ̂²) = 0) corrects nothing. torchjd's
``GradVacWeighting`` does the same from the Gramian but adds eps = 1e-8 to every denominator (a
zero g_j then gets a weight ~ ||p_i|| / eps) and keeps φ̂ in a private buffer; this loop is exact
and its φ̂ [n, n] is in ``state_dict``. Every visited pair updates φ̂_ij, here, in torchjd and in
LibMTL since its 2024 fix ("fix a bug in GradVac": its EMA line was inside the ``if``, so φ̂
only moved when correcting and never rose above 0).
Paper: https://arxiv.org/abs/2010.05874.

Randomness: one ``torch.randperm(n − 1)`` per task per step from torch's global generator (the
loop seeds it and saves it in checkpoints; torchjd's draws), so ``deterministic = False``.

Claims: not scale invariant (scaling g_k scales p_k only); with ``normalize`` (and ``weighted``
heads) it is, for the same drawn orders: the cosines, hence φ̂, do not change. Shift invariant.

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
    beta: EMA rate β in [0, 1) (0.5: LibMTL's ``GradVac_beta`` and torchjd's default).
Returns weights [n] ≥ 1 (w'_i ≥ 1 before / ||g_i|| with ``normalize``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import Strategy, check_real
from mtlbench.strategies.gramian_weighting import F64, GramianWeighting


class GradVac(GramianWeighting):
    """Each gradient pulled toward its pairs' target similarities, then summed (see module
    doc)."""

    name = "gradvac"
    deterministic = False

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None, beta: float = 0.5) -> None:
        self.beta = check_real("beta", beta)
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"Parameter `beta` must be in [0, 1). Found `beta = {beta}`.")
        self.targets: Tensor | None = None  # φ̂ [n, n]
        super().__init__(params=params, normalize=normalize, heads=heads, cr_mogm=cr_mogm,
                         loss_weighting=loss_weighting)

    def build(self) -> Any:
        return None  # computed in solve() (see module doc)

    def solve(self, gramian: Tensor) -> Tensor:
        n = gramian.shape[0]
        if self.targets is None or self.targets.shape != (n, n):
            self.targets = torch.zeros(n, n, dtype=F64)
        target, coef = self.targets, torch.eye(n, dtype=F64)
        norms = gramian.diagonal().clamp_min(0).sqrt()
        for i in range(n):
            others = [j for j in range(n) if j != i]
            for j in (others[k] for k in torch.randperm(n - 1).tolist()):
                p_norm = (coef[i] @ gramian @ coef[i]).clamp_min(0).sqrt()
                if not (p_norm > 0 and norms[j] > 0):
                    continue
                phi = ((coef[i] @ gramian[:, j]) / (p_norm * norms[j])).clamp(-1.0, 1.0)
                sin_target = (1.0 - target[i, j] ** 2).clamp_min(0).sqrt()
                if phi < target[i, j] and sin_target > 0:
                    sin_phi = (1.0 - phi**2).clamp_min(0).sqrt()
                    coef[i, j] += (p_norm * (target[i, j] * sin_phi - phi * sin_target)
                                   / (norms[j] * sin_target))
                target[i, j] = (1.0 - self.beta) * target[i, j] + self.beta * phi
        return coef.sum(0)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.targets is not None:
            state["gradvac_targets"] = self.targets.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        targets = state.get("gradvac_targets")
        self.targets = None if targets is None else targets.to("cpu", F64).clone()
