"""Per-task gradient statistics shared by the gradient engine (``mtlbench.gradients``) and the
strategies: the :class:`GradientStats` a gradient-side strategy receives, and the small numeric
helpers both sides use. Imports nothing of mtlbench, so strategies never depend on the engine and
the engine never depends on the strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GradientStats:
    """Statistics of the per-task gradients g_i = ∇ L_i over the declared parameters.

    Attributes:
        norms: ||g_i||, shape [n].
        gramian: G_ij = g_i · g_j, shape [n, n] (so norms = sqrt(diag(G))).

    The loop computes both in float64, or in float32 where float32 is exact to its precision
    (``mtlbench.gradients.gramian``), so squared norms neither overflow nor underflow; strategies
    accept any float dtype.
    """

    norms: Tensor
    gramian: Tensor


@dataclass
class PerTaskGradients:
    """The per-task gradients of one step over all shared parameters, as a combiner receives them.

    Attributes:
        per_param: for each shared parameter p (model order), ∇_p L_i stacked, [n, *p.shape]
            (read-only: the loop also logs their statistics).
        stats: their norms [n] and Gramian [n, n] (see :class:`GradientStats`).
    """

    per_param: list[Tensor]
    stats: GradientStats

    def flat(self) -> Tensor:
        """All shared gradients as one matrix [n, P] (the Jacobian; a copy unless there is one
        parameter)."""
        n = self.per_param[0].shape[0]
        return torch.cat([g.reshape(n, -1) for g in self.per_param], dim=1)

    def unflatten(self, update: Tensor) -> list[Tensor]:
        """A flat update [P] split back into one tensor per shared parameter (views)."""
        shapes = [g.shape[1:] for g in self.per_param]
        sizes = [g[0].numel() for g in self.per_param]
        return [part.view(shape) for part, shape in
                zip(update.split(sizes), shapes, strict=True)]


def wide(t: Tensor) -> torch.dtype:
    """The dtype statistics of ``t`` are computed in: float64, except on MPS (no float64 there:
    float32, i.e. float32's range)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


#: Squared norms a float32 computation gets right: within this range no sum of squares (nor, by
#: Cauchy-Schwarz, of products) can have overflowed, and the entries that dominate a row are far
#: from float32's subnormals (a squared norm ≥ 1e-20 over ≤ 1e10 entries has some entry² ≥ 1e-30).
FLOAT32_SAFE_SQUARED_NORMS = (1e-20, 1e36)


#: Entries per float32 reduction of a sum of squares or products: squared norms add only positive
#: terms, so float32 rounding builds up with the length (torch's float32 norm of one row is 3.7e-5
#: off at 2.4M entries, a ResNet-18 conv layer; 2e-7 at this length), and the pieces are summed.
FLOAT32_CHUNK = 1 << 16


def float32_is_safe(squared_norms: Tensor) -> bool:
    """Whether float32 ``squared_norms`` [n] (e.g. a Gramian's diagonal) all lie in
    :data:`FLOAT32_SAFE_SQUARED_NORMS`, checked only for CPU tensors (reading them costs no device
    sync there); False for any other dtype or device, whose callers then compute in float64."""
    if squared_norms.dtype != torch.float32 or squared_norms.device.type != "cpu":
        return False
    return in_float32_safe_range(squared_norms.tolist())


def in_float32_safe_range(squared_norms: list[float]) -> bool:
    """Whether every value (squared norms read on the host) lies in
    :data:`FLOAT32_SAFE_SQUARED_NORMS` (False for NaN)."""
    low, high = FLOAT32_SAFE_SQUARED_NORMS
    return all(low <= v <= high for v in squared_norms)


def cosines(gram: Tensor, eps: float = 1e-30) -> Tensor:
    """Pairwise cosine similarities G_ij / (||g_i|| ||g_j||) from a Gramian [n, n]."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(eps)
