"""pcgrad (Yu et al. 2020): the 2-task closed form (order-free), the random order for n ≥ 3
against every order enumerated by hand, reproducibility from torch's global RNG, an exact resume,
and training end to end."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from conftest import killed_and_resumed
from test_gramian_weighting import TINY, make, train_end_to_end, update, weigh
from torch.testing import assert_close

F64 = torch.float64


def surgery(a: torch.Tensor, orders: list[tuple[int, ...]]) -> torch.Tensor:
    """Algorithm 1 on the gradient vectors themselves: p_i starts at g_i and, for j in orders[i],
    loses its component along g_j when p_i · g_j < 0; returns Σ_i p_i."""
    total = torch.zeros(a.shape[1], dtype=F64)
    for i, order in enumerate(orders):
        p = a[i].clone()
        for j in order:
            if p @ a[j] < 0:
                p = p - (p @ a[j]) / (a[j] @ a[j]) * a[j]
        total += p
    return total


def test_two_conflicting_tasks_closed_form_whatever_the_seed() -> None:
    # g_1·g_2 < 0: each is projected on the other's normal plane once (n = 2: no order to draw),
    # d = g_1 − (g_1·g_2/||g_2||²) g_2 + g_2 − (g_2·g_1/||g_1||²) g_1, i.e.
    # w_1 = 1 − G_12/G_11, w_2 = 1 − G_12/G_22
    a = torch.tensor([[2.0, 0.5, 0.0], [-1.0, 1.0, 0.3]], dtype=F64)
    g = a @ a.T
    expected = torch.stack([1 - g[0, 1] / g[0, 0], 1 - g[0, 1] / g[1, 1]])
    by_hand = a[0] - g[0, 1] / g[1, 1] * a[1] + a[1] - g[0, 1] / g[0, 0] * a[0]
    for seed in range(5):
        torch.manual_seed(seed)
        w = weigh(make("pcgrad"), a)
        assert_close(w, expected, rtol=1e-14, atol=0.0)
        assert_close(update(w, a), by_hand, rtol=1e-14, atol=1e-15)
    # the projected gradients are orthogonal to the one they conflicted with
    p1 = a[0] - g[0, 1] / g[1, 1] * a[1]
    assert abs(float(p1 @ a[1])) < 1e-14


def test_no_conflict_is_the_plain_sum() -> None:
    a = torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.5, 0.5]], dtype=F64)
    assert_close(weigh(make("pcgrad"), a), torch.ones(3, dtype=F64))


def test_three_tasks_follow_a_random_order_from_torchs_global_rng() -> None:
    """n = 3 with order-dependent projections: every result is one of the 2³ = 8 order choices
    computed by hand, different seeds reach different ones, and the same seed the same one."""
    a = torch.tensor([[1.0, 0.0, 0.0], [-0.8, 1.0, 0.0], [-0.5, -0.9, 0.4]], dtype=F64)
    others = [[j for j in range(3) if j != i] for i in range(3)]
    candidates = [surgery(a, list(orders)) for orders in
                  itertools.product(*[list(itertools.permutations(o)) for o in others])]
    assert len({tuple(round(float(x), 12) for x in c) for c in candidates}) > 1  # order matters
    strategy, seen = make("pcgrad"), set()
    for seed in range(20):
        torch.manual_seed(seed)
        d = update(weigh(strategy, a), a)
        assert min(float((d - c).abs().max()) for c in candidates) < 1e-12, d
        seen.add(tuple(round(float(x), 9) for x in d))
        torch.manual_seed(seed)
        assert_close(update(weigh(strategy, a), a), d, rtol=0.0, atol=0.0)
    assert len(seen) > 1


def test_resume_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The projection orders come from torch's global RNG, whose state every checkpoint holds:
    a run killed after its step-4 checkpoint and resumed ends exactly as the uninterrupted one."""
    args = ["strategy=pcgrad", *TINY, "trainer.max_steps=8", "trainer.eval_every=4",
            "trainer.checkpoint_every=4"]
    full, resumed = killed_and_resumed(args, "pcgrad", tmp_path, at_step=4)
    assert resumed == full


@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "pcgrad", params)
