"""cagrad (Liu et al. 2021): the mean for c = 0, the dual optimum against a brute-force grid over
the simplex, the primal max-min against a grid over the ball, LibMTL's rescale convention, the
Pareto-stationary fallback, and training end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_gramian_weighting import make, random_rows, stats, train_end_to_end, update, weigh
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.cagrad import CAGrad

F64 = torch.float64
C = 0.5


def dual(w: torch.Tensor, g: torch.Tensor, c: float) -> torch.Tensor:
    """F(w) = g_w · g_0 + c ||g_0|| ||g_w|| for weight rows w [k, n] and the Gramian g [n, n]:
    g_w · g_0 = wᵀ G 1/n, ||g_0||² = 1ᵀ G 1 / n², ||g_w||² = wᵀ G w."""
    n = g.shape[0]
    g0_norm = (g.sum() / n**2).sqrt()
    return (w @ g).sum(1) / n + c * g0_norm * ((w @ g) * w).sum(1).clamp_min(0).sqrt()


def inner_weights(w: torch.Tensor, c: float) -> torch.Tensor:
    """w* ∈ Δ from the rescale=0 weights 1/n + (c ||g_0|| / ||g_w*||) w*."""
    excess = w - 1.0 / w.numel()
    return excess / excess.sum()


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_c_zero_is_the_mean(rescale: int) -> None:
    a = random_rows(3, 4, seed=0)
    w = weigh(make("cagrad", c=0.0, rescale=rescale), a)
    assert_close(w, torch.full((3,), 1 / 3, dtype=F64), rtol=1e-12, atol=0.0)


def test_two_tasks_dual_optimum_by_grid() -> None:
    """n = 2: the w* behind the weights minimizes F over a 200001-point grid of the simplex, and
    the update matches LibMTL's formula (rescale=1) d = (g_0 + c||g_0||/||g_w*|| g_w*) / (1 + c²)
    evaluated at the grid's minimizer."""
    grid = torch.linspace(0, 1, 200_001, dtype=F64)
    grid = torch.stack([grid, 1 - grid], 1)
    for seed in range(4):
        a = random_rows(2, 3, seed=seed)
        a[1] -= 1.5 * a[0]  # make them conflict
        g = stats(a).gramian
        values = dual(grid, g, C)
        w_star = inner_weights(weigh(make("cagrad", rescale=0), a), C)
        assert dual(w_star[None], g, C) <= values.min() + 1e-9 * g.trace()
        best = grid[values.argmin()]
        assert_close(w_star, best, rtol=0.0, atol=1e-4)
        g0, gw = a.mean(0), best @ a
        libmtl = (g0 + C * g0.norm() / gw.norm() * gw) / (1 + C**2)
        assert_close(update(weigh(make("cagrad"), a), a), libmtl, rtol=1e-3, atol=1e-6)


def test_three_tasks_dual_optimum_by_grid() -> None:
    k = 300
    i, j = torch.meshgrid(torch.arange(k + 1), torch.arange(k + 1), indexing="ij")
    inside = i + j <= k
    grid = torch.stack([i[inside], j[inside], k - i[inside] - j[inside]], 1).double() / k
    for seed in range(4):
        a = random_rows(3, 4, seed=10 + seed)
        g = stats(a).gramian
        w_star = inner_weights(weigh(make("cagrad", rescale=0), a), C)
        assert (w_star >= -1e-7).all()
        # to the interior-point solver's tolerance (here optima on a vertex are ~1e-8 inside)
        assert dual(w_star[None], g, C) <= dual(grid, g, C).min() + 1e-7 * g.trace()


def test_primal_max_min_in_the_ball_by_grid() -> None:
    """In 2-D, d (rescale=0) maximizes min_i g_i · d over the disk ||d − g_0|| ≤ c ||g_0||
    (checked against 1000 radii × 3600 angles)."""
    a = torch.tensor([[2.0, 0.2], [-1.0, 1.5]], dtype=F64)
    g0 = a.mean(0)
    radius = C * g0.norm()
    r = torch.linspace(0, 1, 1000, dtype=F64)[:, None] * radius
    t = torch.linspace(0, 2 * math.pi, 3600, dtype=F64)[None, :]
    points = torch.stack([g0[0] + r * t.cos(), g0[1] + r * t.sin()], -1).reshape(-1, 2)
    best = (points @ a.T).min(1).values.max()
    d = update(weigh(make("cagrad", rescale=0), a), a)
    assert (d - g0).norm() <= radius * (1 + 1e-6)
    assert (a @ d).min() >= best - 1e-6 * float(a.norm(dim=1).max()) ** 2


def test_rescale_divides_torchjds_weights() -> None:
    """torchjd's CAGradWeighting returns the rescale=0 weights; rescale=1 (LibMTL's and the
    authors' default) divides them by 1 + c², rescale=2 by 1 + c."""
    from torchjd.aggregation import CAGradWeighting

    a = random_rows(3, 5, seed=2)
    raw = CAGradWeighting(c=C)(stats(a).gramian)
    assert_close(weigh(make("cagrad", rescale=0), a), raw, rtol=1e-6, atol=0.0)
    assert_close(weigh(make("cagrad"), a), raw / (1 + C**2), rtol=1e-6, atol=0.0)
    assert_close(weigh(make("cagrad", rescale=2), a), raw / (1 + C), rtol=1e-6, atol=0.0)


def test_pareto_stationary_falls_back_to_the_mean() -> None:
    """A zero gradient makes w* = e_k, g_w* = 0: torchjd returns all-zero weights (no step at all,
    heads included); the authors' formula then gives d = g_0, the mean weights / (1 + c²)."""
    from torchjd.aggregation import CAGradWeighting

    a = torch.tensor([[1.0, 0.5], [0.0, 0.0], [-0.3, 1.0]], dtype=F64)
    assert (CAGradWeighting(c=C)(stats(a).gramian) == 0).all()
    assert_close(weigh(make("cagrad"), a), torch.full((3,), 1 / 3 / (1 + C**2), dtype=F64))


def test_permutation_equivariance() -> None:
    a = random_rows(4, 6, seed=5)
    perm = torch.tensor([3, 1, 0, 2])
    w = weigh(make("cagrad"), a)
    assert_close(weigh(make("cagrad"), a[perm]), w[perm], rtol=1e-8, atol=1e-12)


def test_hyperparameters_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `c` must be >= 0\. Found `c = -1`\.$"):
        CAGrad(c=-1)
    with pytest.raises(ConfigError, match=r"^Parameter `rescale` must be one of 0, 1, 2\. "
                       r"Found `rescale = 3`\.$"):
        CAGrad(rescale=3)


@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "cagrad", params)
