"""config_grad (ConFIG, Liu et al. 2024): the Gramian-side weights against eq. 2 computed on the
gradient vectors (independent and rank-deficient gradients) and against torchjd's ConFIG, equal
angles, a 2-task example by hand and the authors' 2-task shortcut, degenerate gradients, the
direction-only scale invariance with weighted heads, and training end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_gramian_weighting import (
    assert_same_direction,
    make,
    random_rows,
    train_end_to_end,
    update,
    weigh,
)
from torch.testing import assert_close
from torchjd.aggregation import ConFIG as TorchjdConFIG

F64 = torch.float64


def config_by_vectors(a: torch.Tensor) -> torch.Tensor:
    """Eq. 2 on the gradient rows a [n, m]: g_u = pinv(U) 1 for the unit rows U, then
    (Σ_i g_i · ĝ_u) ĝ_u."""
    g_u = torch.linalg.pinv(a / a.norm(dim=1, keepdim=True)) @ torch.ones(a.shape[0], dtype=F64)
    unit = g_u / g_u.norm()
    return (a @ unit).sum() * unit


def rank_deficient(n: int, rank: int, seed: int) -> torch.Tensor:
    """n gradient rows of length 8 spanning a ``rank``-dimensional subspace, norms 1e-2 … 1e2."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank, dtype=F64, generator=gen) @ torch.randn(rank, 8, dtype=F64,
                                                                     generator=gen)
    return a * 10.0 ** (4 * torch.rand(n, 1, dtype=F64, generator=gen) - 2)


CASES = ([random_rows(n, n + 3, seed=seed, spread=2.0) for n in (2, 3, 5) for seed in range(3)]
         + [rank_deficient(n, r, seed) for n, r in ((3, 2), (5, 3), (5, 2)) for seed in range(3)])


@pytest.mark.parametrize("a", CASES, ids=[f"{a.shape[0]}x{int(torch.linalg.matrix_rank(a))}-{i}"
                                          for i, a in enumerate(CASES)])
def test_the_gramian_gives_eq_2_on_the_vectors(a: torch.Tensor) -> None:
    """U⁺ = Uᵀ (U Uᵀ)⁺ for any U, so g_u = Σ_i (C⁺ 1)_i u_i and the whole update follow from G,
    independent or not; torchjd's ConFIG (pinv of the unit rows) agrees."""
    d = update(weigh(make("config_grad"), a), a)
    scale = float(d.abs().max())
    assert_close(d, config_by_vectors(a), rtol=1e-9, atol=1e-9 * scale)
    assert_close(d, TorchjdConFIG()(a), rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_equal_angles_and_no_conflict(n: int) -> None:
    """Independent gradients: cos(g_i, d) is the same for every task and > 0."""
    for seed in range(5):
        a = random_rows(n, n + 2, seed=10 + seed, spread=2.0)
        d = update(weigh(make("config_grad"), a), a)
        cos = (a @ d) / (a.norm(dim=1) * d.norm())
        assert_close(cos, cos.mean().expand(n), rtol=1e-10, atol=0.0)
        assert cos.min() > 0


def test_two_orthogonal_tasks_by_hand() -> None:
    # u = (1, 0), (0, 1): g_u = (1, 1), ĝ_u = (1, 1)/√2, length g_1·ĝ_u + g_2·ĝ_u = (3 + 1)/√2,
    # d = (2, 2) = (2/3) g_1 + 2 g_2
    a = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=F64)
    w = weigh(make("config_grad"), a)
    assert_close(w, torch.tensor([2 / 3, 2.0], dtype=F64), rtol=1e-14, atol=0.0)
    assert_close(update(w, a), torch.tensor([2.0, 2.0], dtype=F64), rtol=1e-14, atol=0.0)


def test_two_tasks_shortcut_of_the_authors() -> None:
    """ConFIG_update_double: o_1, o_2 the unit components of g_2 ⊥ u_1 and of g_1 ⊥ u_2, the
    direction c o_1 + o_2 with equal projections on u_1 and u_2, i.e. o_2·u_1 = c o_1·u_2 — the
    same update."""
    for seed in range(5):
        a = random_rows(2, 6, seed=20 + seed, spread=2.0)
        u = a / a.norm(dim=1, keepdim=True)
        o1, o2 = a[1] - (a[1] @ u[0]) * u[0], a[0] - (a[0] @ u[1]) * u[1]
        o1, o2 = o1 / o1.norm(), o2 / o2.norm()
        c = (o2 @ u[0]) / (o1 @ u[1])
        direction = (c * o1 + o2) / (c * o1 + o2).norm()
        expected = (a @ direction).sum() * direction
        d = update(weigh(make("config_grad"), a), a)
        assert_close(d, expected, rtol=1e-10, atol=1e-10 * float(d.abs().max()))


def test_same_direction_as_imtl_g() -> None:
    """Both are ∝ Σ_i (C⁺ 1)_i u_i (IMTL-G with normalize: α' = C⁺1 / 1ᵀC⁺1, never flipped)."""
    for n, seed in ((3, 0), (5, 1)):
        a = random_rows(n, n + 2, seed=30 + seed, spread=2.0)
        assert_same_direction(update(weigh(make("config_grad"), a), a),
                              update(weigh(make("imtl_g", normalize=True), a), a), rtol=1e-10)


def test_degenerate_gradients() -> None:
    # g_2 = −g_1: 1 ⊥ range(C), g_u = 0 → no update (the authors' unit_vector(0) = 0)
    a = torch.tensor([[1.0, 2.0, 0.0], [-2.0, -4.0, 0.0]], dtype=F64)
    assert torch.equal(weigh(make("config_grad"), a), torch.zeros(2, dtype=F64))
    # a zero gradient: v_k = w_k = 0, the others as without it
    a = random_rows(3, 5, seed=40, spread=1.0)
    a[1] = 0.0
    w = weigh(make("config_grad"), a)
    assert w[1] == 0
    assert_close(w[[0, 2]], weigh(make("config_grad"), a[[0, 2]]), rtol=1e-12, atol=0.0)
    assert torch.equal(weigh(make("config_grad"), torch.zeros(3, 4, dtype=F64)),
                       torch.zeros(3, dtype=F64))
    a[1, 0] = float("inf")
    assert torch.isnan(weigh(make("config_grad"), a)).all()


def test_scale_invariant_in_direction_only() -> None:
    """Task k's loss times λ: C, v and ĝ_u are unchanged, only the length changes, so
    w(λ) · s = c · w with c > 0 and c ≠ 1. Claimed with weighted heads, not with the authors'
    unweighted ones (head k then gets λ ∇L_k)."""
    a = random_rows(4, 6, seed=50, spread=2.0)
    w = weigh(make("config_grad"), a)
    for k, lam in ((0, 1e-6), (2, 1e6), (3, 0.37)):
        s = torch.ones(4, dtype=F64)
        s[k] = lam
        scaled = weigh(make("config_grad"), s[:, None] * a) * s
        c = float(scaled[0] / w[0]) if k != 0 else float(scaled[1] / w[1])
        assert c > 0 and abs(c - 1) > 1e-3
        assert_close(scaled, c * w, rtol=1e-10, atol=0.0)
    assert make("config_grad").heads == "unweighted"
    assert not make("config_grad").scale_invariant
    assert make("config_grad", heads="weighted").scale_invariant
    assert not make("config_grad").nonnegative_weights


def test_normalize_runs_config_on_the_unit_gradients() -> None:
    a = random_rows(4, 6, seed=60, spread=2.0)
    unit = a / a.norm(dim=1, keepdim=True)
    d = update(weigh(make("config_grad", normalize=True), a), a)
    assert_close(d, config_by_vectors(unit), rtol=1e-10, atol=1e-10 * float(d.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "config_grad", params)
