"""imtl_g (Liu et al. 2021): equal projections on the unit task gradients with weights summing
to 1, the 2-task closed form, conditioning, why the scale-invariance claim needs ``normalize``, and
training end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_gramian_weighting import make, random_rows, stats, train_end_to_end, update, weigh
from torch.testing import assert_close

F64 = torch.float64


def projections(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """u_i · d for d = Σ w_i g_i, u_i = g_i / ||g_i||."""
    return (a / a.norm(dim=1, keepdim=True)) @ update(w, a)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_equal_projections_and_weights_summing_to_one(n: int) -> None:
    """The defining conditions: u_1·d = … = u_n·d (> 0 here) and Σ α_i = 1, for gradient norms
    spanning 1e-8 … 1e8."""
    for seed in range(5):
        a = random_rows(n, n + 2, seed=seed, spread=8.0)
        w = weigh(make("imtl_g"), a)
        p = projections(w, a)
        assert_close(p, p.mean().expand(n), rtol=1e-10, atol=0.0)
        assert_close(w.sum(), torch.tensor(1.0, dtype=F64), rtol=1e-12, atol=0.0)


def test_cosine_route_is_better_conditioned_than_the_gramian() -> None:
    """torchjd's IMTLGWeighting on G itself (pinv of a Gramian whose entries span 1e-16 … 1e16)
    misses the condition by 17% here; on the cosine matrix C it holds to rounding. On a
    well-conditioned G both agree."""
    from torchjd.aggregation import IMTLGWeighting

    a = random_rows(4, 6, seed=0, spread=8.0)
    p = projections(IMTLGWeighting()(stats(a).gramian), a)
    assert (p.max() - p.min()) / p.abs().max() > 0.1
    b = random_rows(4, 6, seed=0)
    assert_close(weigh(make("imtl_g"), b), IMTLGWeighting()(stats(b).gramian), rtol=1e-10,
                 atol=1e-12)


def test_two_tasks_closed_form() -> None:
    """n = 2: α ∝ G⁻¹ (||g_1||, ||g_2||) = (n_1 n_2² (1 − c), n_1² n_2 (1 − c)) / det, so
    α = (n_2, n_1) / (n_1 + n_2) and d = n_1 n_2 / (n_1 + n_2) (u_1 + u_2): the bisector."""
    a = torch.tensor([[3.0, 4.0, 0.0], [-0.2, 0.1, 0.05]], dtype=F64)
    n1, n2 = a.norm(dim=1)
    w = weigh(make("imtl_g"), a)
    assert_close(w, torch.stack([n2, n1]) / (n1 + n2), rtol=1e-13, atol=0.0)
    u = a / a.norm(dim=1, keepdim=True)
    assert_close(update(w, a), n1 * n2 / (n1 + n2) * (u[0] + u[1]), rtol=1e-13, atol=1e-15)


def test_sum_to_one_flips_the_direction_when_a_weight_is_negative() -> None:
    """Why ``scale_invariant`` is False without ``normalize``: here α'_0 = (C⁺1)_0 < 0; scaling
    task 0's loss (and gradient) by λ = 1e-3 divides its term of Σ α'_i / ||g_i|| by λ, the sum
    turns negative, and Σα = 1 turns d into an ascent direction for every task. With
    ``normalize`` (Σ α'_i = 1 on the unit gradients) the update is unchanged."""
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, -0.3, 0.74]], dtype=F64)
    w = weigh(make("imtl_g", normalize=True), a)
    assert w[0] < 0 < w.sum()
    d = update(weigh(make("imtl_g"), a), a)
    assert (a @ d > 0).all()  # descent for every task at λ = 1
    scaled = a.clone()
    scaled[0] *= 1e-3
    d_scaled = update(weigh(make("imtl_g"), scaled), scaled)
    assert (scaled @ d_scaled < 0).all()  # ascent for every task: the direction flipped
    assert_close(update(weigh(make("imtl_g", normalize=True), scaled), scaled),
                 update(w, a), rtol=1e-12, atol=1e-15)


def test_degenerate_gradients() -> None:
    # all gradients 0: every d satisfies the condition; the weights are the mean
    assert_close(weigh(make("imtl_g"), torch.zeros(3, 4, dtype=F64)),
                 torch.full((3,), 1 / 3, dtype=F64))
    # one gradient 0: it takes no part in the condition and gets α = 0 (as in torchjd)
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dtype=F64)
    assert_close(weigh(make("imtl_g"), a), torch.tensor([2 / 3, 0.0, 1 / 3], dtype=F64),
                 rtol=1e-14, atol=0.0)
    # two opposite gradients: C⁺1 = 0, no such d with a positive projection: zeros (torchjd)
    opposite = torch.tensor([[1.0, 2.0], [-2.0, -4.0]], dtype=F64)
    assert (weigh(make("imtl_g"), opposite) == 0).all()


def test_permutation_equivariance() -> None:
    a = random_rows(5, 7, seed=3, spread=2.0)
    perm = torch.tensor([2, 4, 1, 0, 3])
    w = weigh(make("imtl_g"), a)
    assert_close(weigh(make("imtl_g"), a[perm]), w[perm], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "imtl_g", params)
