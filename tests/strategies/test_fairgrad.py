"""fairgrad (Ban & Ji 2024): the optimality condition G w = w^(−1/α) to solver tolerance, exact
scale invariance for α = 1, small gradients, zero gradients, and training end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_gramian_weighting import make, random_rows, stats, train_end_to_end, update, weigh
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.fairgrad import FairGrad

F64 = torch.float64


def residual(w: torch.Tensor, g: torch.Tensor, alpha: float) -> float:
    """max_i |(G w)_i − w_i^(−1/α)| / w_i^(−1/α)."""
    target = w ** (-1.0 / alpha)
    return float(((g @ w - target) / target).abs().max())


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_optimality_condition(n: int, alpha: float) -> None:
    """Each task's first-order improvement g_i · d = (G w)_i equals w_i^(−1/α), to the tolerance of
    scipy's least_squares (≈1e-8 on the trace-normalized problem; 1e-6 relative here)."""
    for seed in range(5):
        a = random_rows(n, n + 2, seed=seed, spread=1.0)
        w = weigh(make("fairgrad", alpha=alpha), a)
        assert (w > 0).all()
        assert residual(w, stats(a).gramian, alpha) < 1e-6


def test_two_orthogonal_tasks_by_hand() -> None:
    # G = diag(4, 1/4): 4 w_1 = 1/w_1, w_2 / 4 = 1/w_2 (α = 1) → w = (1/2, 2): w_i ||g_i|| = 1,
    # d = u_1 + u_2; α = 2: 4 w_1 = w_1^(-1/2) → w_1 = 4^(-2/3), w_2 = 4^(2/3)
    a = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=F64)
    assert_close(weigh(make("fairgrad"), a), torch.tensor([0.5, 2.0], dtype=F64), rtol=1e-7,
                 atol=0.0)
    assert_close(weigh(make("fairgrad", alpha=2.0), a),
                 torch.tensor([4 ** (-2 / 3), 4 ** (2 / 3)], dtype=F64), rtol=1e-6, atol=0.0)


def test_alpha_one_is_exactly_scale_invariant() -> None:
    """α = 1: G' = S G S (task k's loss times λ) is solved by w' = S⁻¹ w, so w'_k λ = w_k and the
    other weights are unchanged — the whole update too. Solved on the cosine matrix, that holds
    to rounding, not only to the solver's tolerance."""
    a = random_rows(4, 6, seed=1, spread=3.0)
    w = weigh(make("fairgrad"), a)
    for k, lam in ((0, 1e-9), (2, 1e9), (3, 0.37)):
        scaled = a.clone()
        scaled[k] *= lam
        s = torch.ones(4, dtype=F64)
        s[k] = lam
        assert_close(weigh(make("fairgrad"), scaled) * s, w, rtol=1e-12, atol=0.0)


def test_other_alphas_are_not_scale_invariant() -> None:
    a = random_rows(3, 5, seed=2)
    w = weigh(make("fairgrad", alpha=2.0), a)
    scaled = a.clone()
    scaled[0] *= 100.0
    d, d_scaled = update(w, a), update(weigh(make("fairgrad", alpha=2.0), scaled), scaled)
    assert (d @ d_scaled) / (d.norm() * d_scaled.norm()) < 0.99


def test_small_gradients() -> None:
    """torchjd's FairGradWeighting stops far from the solution when ||g|| ~ 1e-3 (least_squares'
    absolute tolerances, start 1/n); solving on G / tr G and rescaling by tr^(−α/(1+α)) does not."""
    from torchjd.aggregation import FairGradWeighting

    a = random_rows(3, 5, seed=3) * 1e-3
    g = stats(a).gramian
    for alpha in (0.5, 2.0):
        assert residual(FairGradWeighting(alpha)(g), g, alpha) > 0.1
        assert residual(weigh(make("fairgrad", alpha=alpha), a), g, alpha) < 1e-6


def test_alpha_zero_is_the_mean() -> None:
    a = random_rows(3, 5, seed=4)
    assert_close(weigh(make("fairgrad", alpha=0.0), a), torch.full((3,), 1 / 3, dtype=F64))


def test_zero_gradient_task() -> None:
    """(G w)_k = 0 has no finite w_k: the others are solved without task k (their equations do not
    involve w_k) and task k gets their largest weight; all gradients 0: weights 1."""
    a = random_rows(3, 5, seed=5)
    with_zero = torch.cat([a[:1], torch.zeros(1, 5, dtype=F64), a[1:]])
    w = weigh(make("fairgrad"), with_zero)
    others = weigh(make("fairgrad"), a)
    assert_close(w[[0, 2, 3]], others, rtol=1e-12, atol=0.0)
    assert_close(w[1], others.max(), rtol=1e-12, atol=0.0)
    assert_close(weigh(make("fairgrad"), torch.zeros(2, 3, dtype=F64)), torch.ones(2, dtype=F64))


def test_permutation_equivariance() -> None:
    a = random_rows(5, 7, seed=6)
    perm = torch.tensor([1, 4, 3, 0, 2])
    w = weigh(make("fairgrad"), a)
    assert_close(weigh(make("fairgrad"), a[perm]), w[perm], rtol=1e-9, atol=0.0)


def test_alpha_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `alpha` must be >= 0\. "
                       r"Found `alpha = -1`\.$"):
        FairGrad(alpha=-1)


@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "fairgrad", params)
