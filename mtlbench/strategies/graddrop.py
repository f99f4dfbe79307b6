"""GradDrop: gradient sign dropout — per coordinate of the shared gradients, keep the positive or
the negative task components at random, the sign chosen with probability given by how pure the
signs are (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
Dropout", NeurIPS 2020, https://arxiv.org/abs/2010.06808, Algorithm 1 lines 10-15); a combiner.

With G [n, P] the per-task gradients of all shared parameters (row i: g_i = ∇L_i), per coordinate j

    P_j = ½ (1 + Σ_i G_ij / Σ_i |G_ij|)                       (positive sign purity, in [0, 1])
    M_ij = 1[f(P_j) > U_j] 1[G_ij > 0] + 1[f(P_j) < U_j] 1[G_ij < 0],   U_j ~ U(0, 1) i.i.d.
    d_j = Σ_i (ℓ + (1 − ℓ) M_ij) G_ij

with f = identity (the paper's usual choice, torchjd's default, LibMTL's only) and leak ℓ
(LibMTL's scalar ``leak``, 0 by default: the dropped sign contributes nothing; ℓ = 1 is the plain
sum). A coordinate where every task's gradient is 0 gets d_j = 0. This is torchjd's ``GradDrop``
aggregator applied to the Jacobian G (same formula and the same single ``torch.rand(P)`` draw, so
the same seed gives the same d: see the tests). LibMTL (and the paper's experiments) apply GradDrop
at the shared *representation* (``rep_grad=True``, with the sign correction of the batch-summed
activations); here it acts on the shared parameters' gradients, as torchjd does.

Logged ``train/weight/<task>``: c_i = ⟨d_i, g_i⟩ / ||g_i||² = ℓ + (1 − ℓ) ||M_i ∘ g_i||² / ||g_i||²,
with d_i = (ℓ + (1 − ℓ) M_i) ∘ g_i task i's part of d: the fraction of its squared gradient that
survives the masks, in [ℓ, 1] (1 for a gradient of exactly 0). d is not Σ_i c_i g_i.
Heads: ``unweighted`` (head i receives its own ∇L_i, as in LibMTL and torchjd).

Randomness: one ``torch.rand(P)`` per step on the gradients' device from torch's global generator,
which the loop seeds and saves in every checkpoint (CPU and CUDA), so a resumed run is exact.
``deterministic = False``. Claims: shift invariant for the same draws (the losses are not read);
not scale invariant (scaling g_k changes the purities).

Parameters:
    leak: ℓ in [0, 1], the same for every task.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import Combined, Combiner, PerTaskGradients, check_real, wide


class GradDrop(Combiner):
    """Sum of the per-task gradients with one sign dropped per coordinate (see module doc)."""

    shift_invariant = True
    deterministic = False
    heads = "unweighted"

    def __init__(self, *, leak: float = 0.0) -> None:
        self.leak = check_real("leak", leak)
        if not 0.0 <= self.leak <= 1.0:
            raise ConfigError(f"Parameter `leak` must be in [0, 1]. Found `leak = {leak}`.")

    def combine(self, losses: Tensor, grads: PerTaskGradients) -> Combined:
        g = grads.flat()  # [n, P]
        purity = 0.5 * (1.0 + g.sum(dim=0) / g.abs().sum(dim=0))  # nan where every G_ij = 0
        u = torch.rand(purity.shape, dtype=g.dtype, device=g.device)
        keep = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))  # M [n, P]
        masked = g * keep
        update = (self.leak * g + (1.0 - self.leak) * masked).sum(dim=0) if self.leak else \
            masked.sum(dim=0)
        dtype = wide(g)
        kept = torch.linalg.vector_norm(masked, dim=1, dtype=dtype).square()
        total = torch.linalg.vector_norm(g, dim=1, dtype=dtype).square()
        fraction = torch.where(total > 0, kept / total.clamp_min(torch.finfo(dtype).tiny), 1.0)
        weights = self.leak + (1.0 - self.leak) * fraction
        return Combined(grads.unflatten(update), weights.to(losses.dtype), None)
