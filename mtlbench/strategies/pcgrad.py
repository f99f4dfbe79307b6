"""PCGrad: "gradient surgery" — project each task gradient onto the normal plane of every other
task gradient it conflicts with, in a random order, then add (Yu et al., 2020, Algorithm 1).

    for each i:  p_i ← g_i;  for j ≠ i in a random order:
                     if p_i · g_j < 0:  p_i ← p_i − (p_i · g_j / ||g_j||²) g_j
    d = Σ_i p_i = Σ_i w_i g_i        (w ≥ 1: w_i = 1 + what the other tasks' projections add)

For n = 2 the order does not matter: d = g_1 − (g_1·g_2/||g_2||²) g_2 + g_2 − (g_2·g_1/||g_1||²) g_1
when g_1 · g_2 < 0, else g_1 + g_2. Computed by torchjd's ``PCGradWeighting`` on the Gramian alone.
Paper: https://arxiv.org/abs/2001.06782.

Randomness: one ``torch.randperm(n)`` per task per step from torch's global (CPU) generator, which
the loop seeds (``seed``) and saves in every checkpoint, so a resumed run draws the same orders and
stays exact. ``deterministic = False``: two calls on the same Gramian may differ (n ≥ 3), so exact
permutation / invariance checks do not apply.

Claims: not scale invariant (scaling g_k scales p_k only); with ``normalize`` it is, for the same
drawn orders. Shift invariant for the same drawn orders (the losses are not read).

Parameters:
    params: ``shared``, ``last_shared`` or ``representation`` (see ``gramian_weighting``).
    normalize: weigh the unit gradients; the update is Σ_i w'_i g_i / ||g_i||.
Returns weights [n] ≥ 1 (a 0-gradient task: 1; with ``normalize``, w' ≥ 1 before / ||g_i||).
"""

from __future__ import annotations

from typing import Any

from mtlbench.strategies.gramian_weighting import GramianWeighting


class PCGrad(GramianWeighting):
    """Sum of the task gradients, each projected off the ones it conflicts with (see module
    doc)."""

    name = "pcgrad"
    deterministic = False

    # no hyperparameters of its own: GramianWeighting.__init__ (params, normalize, heads,
    # cr_mogm, loss_weighting)

    def build(self) -> Any:
        from torchjd.aggregation import PCGradWeighting

        return PCGradWeighting()
