"""gradvac (Wang et al. 2021): the Gramian-side loop against Algorithm 1 on the gradient vectors
over several steps (the same random orders), the correction hitting its target similarity, β = 0
as PCGrad, torchjd's GradVacWeighting, zero gradients, the random order, an exact resume from
state_dict and from a checkpoint, and training end to end."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import killed_and_resumed
from test_gramian_weighting import TINY, make, random_rows, train_end_to_end, update, weigh
from test_pcgrad import surgery
from torch.testing import assert_close
from torchjd.aggregation import GradVacWeighting

from mtlbench.errors import ConfigError
from mtlbench.strategies.gradvac import GradVac

F64 = torch.float64


def draw_orders(n: int) -> list[list[int]]:
    """What the strategy draws: for each task i, torch.randperm(n − 1) over the other tasks."""
    orders = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        orders.append([others[k] for k in torch.randperm(n - 1).tolist()])
    return orders


def peek_orders(n: int) -> list[list[int]]:
    """The orders the next call will draw, leaving torch's global RNG as it was."""
    state = torch.get_rng_state()
    orders = draw_orders(n)
    torch.set_rng_state(state)
    return orders


def vaccine(a: torch.Tensor, targets: torch.Tensor, beta: float,
            orders: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 on the gradient rows a [n, m]: (Σ_i p_i, the updated targets φ̂)."""
    targets, total = targets.clone(), torch.zeros(a.shape[1], dtype=F64)
    for i, order in enumerate(orders):
        p = a[i].clone()
        for j in order:
            phi, goal = float(p @ a[j] / (p.norm() * a[j].norm())), float(targets[i, j])
            if phi < goal:
                p = p + (p.norm() * (goal * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - goal**2))
                         / (a[j].norm() * math.sqrt(1 - goal**2))) * a[j]
            targets[i, j] = (1 - beta) * goal + beta * phi
        total += p
    return total, targets


def drifting(n: int, steps: int, seed: int) -> list[torch.Tensor]:
    base, turn = random_rows(n, n + 3, seed=seed, spread=1.0), random_rows(n, n + 3, seed=seed + 1)
    return [base + 0.4 * t * turn for t in range(steps)]


@pytest.mark.parametrize("beta", [0.5, 0.01])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_matches_the_algorithm_on_vectors_over_steps(n: int, beta: float) -> None:
    strategy, targets = make("gradvac", beta=beta), torch.zeros(n, n, dtype=F64)
    torch.manual_seed(n)
    for a in drifting(n, 6, seed=n):
        expected, targets = vaccine(a, targets, beta, peek_orders(n))
        w = weigh(strategy, a)
        assert (w >= 1).all()
        assert_close(update(w, a), expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))
        assert_close(strategy.state_dict()["gradvac_targets"], targets, rtol=1e-12, atol=1e-14)


def test_correction_reaches_the_target_by_hand() -> None:
    """n = 2, cos(g_1, g_2) = −1/2 below both targets (0.3, 0.6): p_1 = g_1 + c_12 g_2 with
    cos(p_1, g_2) = 0.3, p_2 = g_2 + c_21 g_1 with cos(p_2, g_1) = 0.6 (w = (1 + c_21, 1 + c_12));
    then φ̂ = (0.3 − 0.5)/2, (0.6 − 0.5)/2."""
    a = torch.tensor([[2.0, 0.0], [-0.25, 0.25 * math.sqrt(3)]], dtype=F64)
    strategy = make("gradvac")
    strategy.load_state_dict({"gradvac_targets": torch.tensor([[0.0, 0.3], [0.6, 0.0]],
                                                              dtype=F64)})
    w = weigh(strategy, a)
    p1, p2 = a[0] + (w[1] - 1) * a[1], a[1] + (w[0] - 1) * a[0]
    assert_close(p1 @ a[1] / (p1.norm() * a[1].norm()), torch.tensor(0.3, dtype=F64))
    assert_close(p2 @ a[0] / (p2.norm() * a[0].norm()), torch.tensor(0.6, dtype=F64))
    # the closed form: c_12 = ||g_1|| (0.3 √0.75 + 0.5 √0.91) / (||g_2|| √0.91)
    c12 = 2.0 * (0.3 * math.sqrt(0.75) + 0.5 * math.sqrt(0.91)) / (0.5 * math.sqrt(0.91))
    assert_close(w[1], torch.tensor(1 + c12, dtype=F64), rtol=1e-14, atol=0.0)
    assert_close(strategy.state_dict()["gradvac_targets"],
                 torch.tensor([[0.0, -0.1], [0.05, 0.0]], dtype=F64), rtol=1e-14, atol=1e-15)


def test_beta_zero_is_pcgrad_with_the_same_orders() -> None:
    """φ̂ stays 0: the correction is the projection off g_j when p_i · g_j < 0."""
    strategy = make("gradvac", beta=0.0)
    torch.manual_seed(1)
    for a in drifting(4, 5, seed=11):
        expected = surgery(a, peek_orders(4))
        assert_close(update(weigh(strategy, a), a), expected, rtol=1e-10, atol=1e-12)
    assert not strategy.state_dict()["gradvac_targets"].any()


def test_torchjd_gradvac_weighting_agrees() -> None:
    """torchjd's GradVacWeighting (same draws, eps = 1e-8 in its denominators) over 5 steps."""
    strategy, reference = make("gradvac"), GradVacWeighting(beta=0.5)
    torch.manual_seed(2)
    for a in drifting(3, 5, seed=21):
        state = torch.get_rng_state()
        expected = reference(a @ a.T)
        torch.set_rng_state(state)
        assert_close(weigh(strategy, a), expected, rtol=1e-6, atol=0.0)


def test_zero_gradient_pairs_are_skipped() -> None:
    a = random_rows(3, 5, seed=30, spread=1.0)
    a[1] = 0.0
    strategy = make("gradvac")
    before = torch.full((3, 3), 0.9, dtype=F64).fill_diagonal_(0.0)
    strategy.load_state_dict({"gradvac_targets": before})
    w = weigh(strategy, a)
    assert torch.isfinite(w).all() and (w >= 1).all() and w[1] == 1
    after = strategy.state_dict()["gradvac_targets"]
    assert torch.equal(after[1], before[1]) and torch.equal(after[:, 1], before[:, 1])
    assert after[0, 2] != 0.9 and after[2, 0] != 0.9


def test_random_order_from_torchs_global_rng() -> None:
    """n = 3 at the first step (φ̂ = 0, PCGrad-like) with order-dependent corrections: the same
    seed gives the same update, different seeds reach different ones."""
    a = torch.tensor([[1.0, 0.0, 0.0], [-0.8, 1.0, 0.0], [-0.5, -0.9, 0.4]], dtype=F64)
    seen, fresh = set(), make("gradvac")
    for seed in range(20):
        torch.manual_seed(seed)
        d = update(weigh(copy.deepcopy(fresh), a), a)
        torch.manual_seed(seed)
        assert torch.equal(update(weigh(copy.deepcopy(fresh), a), a), d)
        seen.add(tuple(round(float(x), 9) for x in d))
    assert len(seen) > 1
    assert not make("gradvac").deterministic


def test_normalize_is_scale_invariant_for_the_same_orders() -> None:
    rows, s = drifting(3, 4, seed=40), torch.tensor([1e-6, 1.0, 1e6], dtype=F64)
    plain, scaled = make("gradvac", normalize=True), make("gradvac", normalize=True)
    for t, a in enumerate(rows):
        torch.manual_seed(t)
        w = weigh(plain, a)
        torch.manual_seed(t)
        assert_close(weigh(scaled, s[:, None] * a) * s, w, rtol=1e-10, atol=0.0)
    assert not make("gradvac").scale_invariant and make("gradvac", normalize=True,
                                                        heads="weighted").scale_invariant


def test_state_dict_resumes_exactly() -> None:
    rows = drifting(3, 8, seed=50)
    strategy = make("gradvac", cr_mogm=0.3)
    torch.manual_seed(5)
    for a in rows[:4]:
        weigh(strategy, a)
    state, rng = copy.deepcopy(strategy.state_dict()), torch.get_rng_state()
    rest = [weigh(strategy, a) for a in rows[4:]]
    resumed = make("gradvac", cr_mogm=0.3)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    assert all(torch.equal(w, weigh(resumed, a)) for w, a in zip(rest, rows[4:], strict=True))


def test_beta_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `beta` must be in \[0, 1\)\. "
                       r"Found `beta = 1`\.$"):
        GradVac(beta=1)
    with pytest.raises(ConfigError, match=r"^Parameter `beta` must be in \[0, 1\)\. "
                       r"Found `beta = -0\.1`\.$"):
        GradVac(beta=-0.1)
    with pytest.raises(ConfigError, match=r"^Parameter `beta` must be a finite real number\. "
                       r"Found `beta = nan`\.$"):
        GradVac(beta=float("nan"))


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    """φ̂ and torch's RNG are in every checkpoint: a run killed after its step-4 checkpoint and
    resumed ends exactly as the uninterrupted one."""
    args = ["strategy=gradvac", *TINY, "trainer.max_steps=8", "trainer.eval_every=4",
            "trainer.checkpoint_every=4"]
    full, resumed = killed_and_resumed(args, "gradvac", tmp_path, at_step=4)
    assert resumed == full


@pytest.mark.slow
@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "gradvac", params)
