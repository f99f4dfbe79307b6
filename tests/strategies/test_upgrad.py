"""upgrad (Quinton & Rey 2024): the 2-task closed form, the non-conflicting property on
conflicting examples, w ≥ 1/n, the mean when nothing conflicts, and training end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_gramian_weighting import conflicting, make, train_end_to_end, update, weigh
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.upgrad import UPGrad

F64 = torch.float64


def test_two_conflicting_tasks_closed_form() -> None:
    """For 2 tasks the dual cone's projection of g_1 is its projection on the half-space
    {y : g_2 · y ≥ 0}: π(g_1) = g_1 − (g_1·g_2 / ||g_2||²) g_2 (and g_1 · π(g_1) ≥ 0 by
    Cauchy-Schwarz), so d = (π(g_1) + π(g_2)) / 2 has w_1 = (1 − G_12/G_11) / 2,
    w_2 = (1 − G_12/G_22) / 2 — half of PCGrad's 2-task update."""
    a = torch.tensor([[2.0, 0.5, 0.0], [-1.0, 1.0, 0.3]], dtype=F64)
    g = a @ a.T
    assert g[0, 1] < 0
    expected = 0.5 * torch.stack([1 - g[0, 1] / g[0, 0], 1 - g[0, 1] / g[1, 1]])
    assert_close(weigh(make("upgrad", reg_eps=1e-12), a), expected, rtol=1e-9, atol=0.0)
    # torchjd's default regularization (ε = 1e-4 of tr G on the diagonal) moves it by < 1e-3
    assert_close(weigh(make("upgrad"), a), expected, rtol=1e-3, atol=0.0)
    d = update(weigh(make("upgrad", reg_eps=1e-12), a), a)
    assert_close(a @ d, torch.tensor([g[0, 0] - g[0, 1] ** 2 / g[1, 1],
                                      g[1, 1] - g[0, 1] ** 2 / g[0, 0]], dtype=F64) / 2,
                 rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_update_conflicts_with_no_task(n: int) -> None:
    """g_i · d ≥ 0 for every i. With the regularization ε the QP's optimality gives
    G w ≥ −ε tr(G) w (componentwise), which is the bound checked for the default ε; with a tiny ε
    the update is non-conflicting to rounding. Weights are ≥ 1/n (each v⁽ⁱ⁾ ≥ e_i / n)."""
    for seed in range(5):
        a = conflicting(n, seed)
        g = a @ a.T
        for eps in (1e-4, 1e-10):
            w = weigh(make("upgrad", reg_eps=eps), a)
            assert (w >= 1.0 / n - 1e-12).all(), w
            inner = a @ update(w, a)
            assert (inner >= -eps * g.trace() * w - 1e-12 * g.trace()).all(), (inner, w)


def test_mean_when_nothing_conflicts() -> None:
    # all G_ij ≥ 0: every g_i is already in the dual cone, so v⁽ⁱ⁾ = e_i / n and w = 1/n exactly
    a = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 2.0]], dtype=F64)
    assert ((a @ a.T) >= 0).all()
    assert_close(weigh(make("upgrad"), a), torch.full((3,), 1 / 3, dtype=F64), rtol=1e-12,
                 atol=0.0)


def test_permutation_equivariance() -> None:
    a = conflicting(5, seed=1)
    perm = torch.tensor([4, 2, 0, 3, 1])
    w = weigh(make("upgrad"), a)
    assert_close(weigh(make("upgrad"), a[perm]), w[perm], rtol=1e-10, atol=1e-14)


def test_reg_eps_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `reg_eps` must be > 0\. "
                       r"Found `reg_eps = 0`\.$"):
        UPGrad(reg_eps=0)


@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "upgrad", params)
