"""mgda (Sener & Koltun 2018): min-norm weights against the 2-task closed form and the KKT
conditions, permutation equivariance, hyperparameter checks, and training end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_gramian_weighting import make, random_rows, train_end_to_end, update, weigh
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.mgda import MGDA

F64 = torch.float64


def closed_form(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """min_{w ∈ [0,1]} ||w g1 + (1-w) g2||²: the derivative 2 (g1 - g2) · (w g1 + (1-w) g2) = 0
    gives w1 = (g2·g2 - g1·g2) / ||g1 - g2||², clipped to [0, 1] (the objective is convex)."""
    w1 = ((g2 @ g2 - g1 @ g2) / (g1 - g2).square().sum()).clamp(0.0, 1.0)
    return torch.stack([w1, 1.0 - w1])


@pytest.mark.parametrize("pair", [
    ([1.0, 0.0], [0.0, 1.0]),           # orthogonal, equal norms: w = (1/2, 1/2)
    ([2.0, 0.0], [-1.0, 1.0]),          # conflicting: interior solution w1 = (2 + 2) / 10 = 0.4
    ([1.0, 0.0], [3.0, 1.0]),           # g1·g2 = 3 ≥ g1·g1 = 1: clipped, w = (1, 0)
    ([0.3, -2.0, 1.0], [1.5, 0.5, -0.2]),
])
def test_two_tasks_closed_form(pair) -> None:
    a = torch.tensor(pair, dtype=F64)
    w = weigh(make("mgda"), a)
    assert_close(w, closed_form(a[0], a[1]), rtol=1e-12, atol=1e-12)
    assert_close(w.sum(), torch.tensor(1.0, dtype=F64))


def test_interior_example_by_hand() -> None:
    # g1 = (2, 0), g2 = (-1, 1): G = [[4, -2], [-2, 2]], w1 = (2 + 2) / (4 + 2 + 4) = 0.4,
    # d = 0.4 (2, 0) + 0.6 (-1, 1) = (0.2, 0.6), and d·g1 = d·g2 = ||d||² = 0.4 (equalizer)
    a = torch.tensor([[2.0, 0.0], [-1.0, 1.0]], dtype=F64)
    w = weigh(make("mgda"), a)
    assert_close(w, torch.tensor([0.4, 0.6], dtype=F64), rtol=1e-14, atol=1e-14)
    d = update(w, a)
    assert_close(a @ d, torch.full((2,), 0.4, dtype=F64), rtol=1e-14, atol=1e-14)


def test_normalized_two_tasks_bisect_the_unit_gradients() -> None:
    """normalize (LibMTL's mgda_gn=l2): for unit vectors w'_1 = (1 - c) / (2 - 2c) = 1/2, so
    w_i = 1 / (2 ||g_i||) and d = (u_1 + u_2) / 2."""
    a = torch.tensor([[30.0, 0.0, 0.0], [-0.1, 0.2, 0.0]], dtype=F64)
    w = weigh(make("mgda", normalize=True), a)
    assert_close(w, 0.5 / a.norm(dim=1), rtol=1e-12, atol=0.0)


def test_three_tasks_near_the_grid_minimum() -> None:
    """n = 3 against a brute-force grid over the simplex (step 1/400). torchjd's Frank-Wolfe stops
    once its step size is below epsilon = 1e-3: its objective is within 0.5% of max_i ||g_i||² of
    the minimum (its weights can be 0.05 off where the optimum lies on a face of the simplex: plain
    Frank-Wolfe never empties a vertex), and the update still descends for every task."""
    k = 400
    i, j = torch.meshgrid(torch.arange(k + 1), torch.arange(k + 1), indexing="ij")
    inside = i + j <= k
    grid = torch.stack([i[inside], j[inside], k - i[inside] - j[inside]], 1).double() / k
    for seed in range(10):
        a = random_rows(3, 5, seed=seed)
        g = a @ a.T
        best = ((grid @ g) * grid).sum(1).min()
        w = weigh(make("mgda"), a)
        assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=F64))
        assert w @ g @ w <= best + 5e-3 * g.diagonal().max()
        assert (a @ update(w, a) > 0).all()  # a common descent direction


def test_permutation_equivariance() -> None:
    a = random_rows(5, 7, seed=9)
    perm = torch.tensor([3, 0, 4, 1, 2])
    w = weigh(make("mgda"), a)
    assert_close(weigh(make("mgda"), a[perm]), w[perm], rtol=1e-12, atol=1e-14)


def test_hyperparameters_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `epsilon` must be > 0\. "
                       r"Found `epsilon = 0`\.$"):
        MGDA(epsilon=0)
    with pytest.raises(ConfigError, match=r"^Parameter `epsilon` must be a finite real number\. "
                       r"Found `epsilon = nan`\.$"):
        MGDA(epsilon=float("nan"))
    with pytest.raises(ConfigError, match=r"^Parameter `max_iters` must be an integer >= 1\. "
                       r"Found `max_iters = 0`\.$"):
        MGDA(max_iters=0)


@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "mgda", params)
