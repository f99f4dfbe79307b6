"""aligned_mtl (Senushkin et al. 2023): weights against an eigen-decomposition computed here, the
aligned gradients' Gramian condition, scale modes, rank deficiency, and training end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_gramian_weighting import make, random_rows, stats, train_end_to_end, update, weigh
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.aligned_mtl import AlignedMTL

F64 = torch.float64


def balance(g: torch.Tensor, mode: str = "min",
            eps: float = torch.finfo(F64).eps) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, σ²): G = V Λ Vᵀ restricted to the eigenvalues above n · eps · λ_max, σ² from
    ``mode``, B = σ V Λ^(-1/2) Vᵀ."""
    lam, v = torch.linalg.eigh(g)
    keep = lam > lam.max() * g.shape[0] * eps
    lam, v = lam[keep], v[:, keep]
    sigma2 = {"min": lam.min(), "median": lam.median(), "rmse": lam.mean()}[mode]
    return sigma2.sqrt() * v @ torch.diag(lam.rsqrt()) @ v.T, sigma2


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_weights_are_the_balance_transform_of_the_mean(n: int, mode: str) -> None:
    """w = B (1/n), and the aligned gradients ĝ = B A (rows) have Gramian B G B = σ² I: orthogonal,
    all of norm σ; the update is their mean."""
    for seed in range(3):
        a = random_rows(n, n + 2, seed=seed, spread=1.0)
        g = stats(a).gramian
        b, sigma2 = balance(g, mode)
        w = weigh(make("aligned_mtl", scale_mode=mode), a)
        assert_close(w, b @ torch.full((n,), 1 / n, dtype=F64), rtol=1e-9, atol=1e-12)
        assert_close(b @ g @ b, sigma2 * torch.eye(n, dtype=F64), rtol=0.0, atol=1e-9 * sigma2)
        assert_close(update(w, a), (b @ a).mean(0), rtol=1e-9, atol=1e-12)


def test_rank_deficient_gradients() -> None:
    """3 gradients in a plane: rank 2; the aligned Gramian is σ² times the projector V Vᵀ onto
    the gradients' span (σ² the smaller nonzero eigenvalue)."""
    a = torch.tensor([[1.0, 0.0, 0.0], [0.3, 1.0, 0.0], [-1.0, 0.5, 0.0]], dtype=F64)
    g = stats(a).gramian
    b, sigma2 = balance(g)
    lam, v = torch.linalg.eigh(g)
    proj = v[:, 1:] @ v[:, 1:].T  # the two nonzero eigenvalues
    assert_close(b @ g @ b, sigma2 * proj, rtol=0.0, atol=1e-9)
    assert_close(weigh(make("aligned_mtl"), a), b.sum(1) / 3, rtol=1e-8, atol=1e-12)


OFFICIAL_EPS = torch.finfo(torch.float32).eps  # the official code's torch.finfo().eps


def test_the_rank_cut_by_default_and_as_the_official_code() -> None:
    """Two gradients at sin θ = 3e-4: λ_2/λ_1 ≈ 2e-8. The default cut (float64's ε on the float64
    Gramian, as torchjd) keeps both directions and scales the update by σ = λ_2^½; the official
    code's cut (float32's ε, ``rank_eps=1.1920929e-07``) keeps one, and its update is the mean
    gradient's projection on it, of norm ≈ 1: 6,700 times larger."""
    from torchjd.aggregation import AlignedMTLWeighting

    theta = 3e-4
    a = torch.tensor([[1.0, 0.0], [math.cos(theta), math.sin(theta)]], dtype=F64)
    g = stats(a).gramian
    default = weigh(make("aligned_mtl"), a)
    assert_close(default, AlignedMTLWeighting()(g / g.trace()), rtol=1e-9, atol=0.0)
    assert float(update(default, a).norm()) < 2e-4
    official = weigh(make("aligned_mtl", rank_eps=OFFICIAL_EPS), a)
    b, _ = balance(g, eps=OFFICIAL_EPS)
    assert torch.linalg.matrix_rank(b) == 1
    assert_close(official, b @ torch.full((2,), 0.5, dtype=F64), rtol=1e-9, atol=0.0)
    assert abs(float(update(official, a).norm()) - 1.0) < 1e-6


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_default_equals_torchjd(mode: str) -> None:
    """Random and nearly dependent gradients (λ_min/λ_max down to ~1e-12), to 1e-7: the same
    eigen-decomposition (``UPLO="U"``; the lower triangle's rounds differently, which B's Λ^(-1/2)
    amplifies to ~1e-6 at λ_min/λ_max ~1e-8)."""
    from torchjd.aggregation import AlignedMTLWeighting

    for seed in range(3):
        for squash in (1.0, 1e-3, 1e-6):
            a = random_rows(4, 6, seed=seed, spread=1.0)
            a[3] = a[2] + squash * a[3]  # (squash → 0: rows 2 and 3 nearly equal)
            g = stats(a).gramian
            assert_close(weigh(make("aligned_mtl", scale_mode=mode), a),
                         AlignedMTLWeighting(scale_mode=mode)(g / g.trace()),
                         rtol=1e-7, atol=1e-12)


def test_rank_eps_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `strategy\.rank_eps` must be >= 0\. "
                                          r"Found `strategy\.rank_eps = -1\.0`\.$"):
        make("aligned_mtl", rank_eps=-1.0)


def test_official_code_sums_the_aligned_gradients() -> None:
    """The official code and LibMTL use w = B 1 (the sum of the ĝ_i): n times these weights."""
    a = random_rows(4, 6, seed=7)
    b, _ = balance(stats(a).gramian)
    assert_close(4 * weigh(make("aligned_mtl"), a), b.sum(1), rtol=1e-9, atol=1e-12)


def test_weights_can_be_negative() -> None:
    """B 1/n is not sign-constrained (why the shared 'weights ≥ 0' property fails for it)."""
    a = random_rows(5, 7, seed=2)  # (4 of the first 20 seeds give a negative weight at n = 5)
    w = weigh(make("aligned_mtl"), a)
    assert (w < 0).any()
    b, _ = balance(stats(a).gramian)
    assert_close(w, b.mean(1), rtol=1e-9, atol=1e-12)


def test_permutation_equivariance() -> None:
    a = random_rows(5, 7, seed=4)
    perm = torch.tensor([4, 0, 3, 2, 1])
    w = weigh(make("aligned_mtl"), a)
    assert_close(weigh(make("aligned_mtl"), a[perm]), w[perm], rtol=1e-10, atol=1e-13)


def test_scale_mode_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `scale_mode` must be one of min, median, "
                       r"rmse\. Found `scale_mode = max`\.$"):
        AlignedMTL(scale_mode="max")


@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "aligned_mtl", params)
