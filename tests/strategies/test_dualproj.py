"""dualproj (GEM's projection): the mean gradient projected onto the dual cone, checked by the
projection's optimality conditions and a 2-task example by hand, and training end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_gramian_weighting import (
    conflicting,
    make,
    random_rows,
    train_end_to_end,
    update,
    weigh,
)
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.dualproj import DualProj

F64 = torch.float64


def test_two_tasks_by_hand() -> None:
    # g_1 = (3, 0), g_2 = (-1, 1): g_0 = (1, 0.5) conflicts with g_2 only (g_0·g_2 = -0.5), so
    # d = g_0 - (g_0·g_2 / ||g_2||²) g_2 = g_0 + 0.25 g_2 = (0.75, 0.75), which is in the cone
    # (d·g_1 = 2.25, d·g_2 = 0): w = (1/2, 1/2 + 1/4)
    a = torch.tensor([[3.0, 0.0], [-1.0, 1.0]], dtype=F64)
    w = weigh(make("dualproj", reg_eps=1e-12), a)
    assert_close(w, torch.tensor([0.5, 0.75], dtype=F64), rtol=1e-9, atol=0.0)
    assert_close(update(w, a), torch.tensor([0.75, 0.75], dtype=F64), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_projection_of_the_mean_onto_the_dual_cone(n: int) -> None:
    """d is the Euclidean projection of g_0 = mean g_i onto K = {y : g_i · y ≥ 0 ∀i} iff (Moreau)
    d ∈ K, g_0 − d = −Σ μ_i g_i with μ ≥ 0, and μ_i (g_i · d) = 0. Here μ = w − 1/n."""
    for seed in range(5):
        a = conflicting(n, seed)
        scale = (a @ a.T).trace()
        w = weigh(make("dualproj", reg_eps=1e-10), a)
        d = update(w, a)
        mu = w - 1.0 / n
        assert (mu >= -1e-12).all(), mu  # w ≥ 1/n
        inner = a @ d
        assert (inner >= -1e-9 * scale).all(), inner  # d ∈ K: non-conflicting
        assert_close(mu * inner, torch.zeros(n, dtype=F64), rtol=0.0, atol=1e-8 * scale)
        assert_close(a.mean(0) - d, -(mu @ a), rtol=1e-12, atol=1e-12)


def test_default_regularization_keeps_the_update_nearly_non_conflicting() -> None:
    """With torchjd's ε = 1e-4 (of tr G): G w ≥ −ε tr(G) w, as for UPGrad."""
    for seed in range(5):
        a = conflicting(4, seed)
        g = a @ a.T
        w = weigh(make("dualproj"), a)
        assert (a @ update(w, a) >= -1e-4 * g.trace() * w - 1e-12 * g.trace()).all()


def test_mean_when_the_mean_conflicts_with_no_task() -> None:
    a = random_rows(3, 4, seed=0).abs()  # all positive: g_0 · g_i > 0
    assert_close(weigh(make("dualproj"), a), torch.full((3,), 1 / 3, dtype=F64), rtol=1e-12,
                 atol=0.0)


def test_permutation_equivariance() -> None:
    a = conflicting(5, seed=2)
    perm = torch.tensor([1, 3, 0, 4, 2])
    w = weigh(make("dualproj"), a)
    assert_close(weigh(make("dualproj"), a[perm]), w[perm], rtol=1e-10, atol=1e-14)


def test_reg_eps_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `reg_eps` must be a finite real number\. "
                       r"Found `reg_eps = inf`\.$"):
        DualProj(reg_eps=float("inf"))


@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "dualproj", params)
