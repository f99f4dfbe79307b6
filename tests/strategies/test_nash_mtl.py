"""nash_mtl (Navon et al. 2022): the bargaining condition G α = 1/α (by hand for orthogonal
gradients, against FairGrad α = 1, and against torchjd on the gradients themselves), the Gramian
factor handed to torchjd, the max_norm clip (shared update only), update_weights_every, zero
gradients, an exact resume from state_dict and from a checkpoint, and training end to end."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchjd._mixins
from conftest import killed_and_resumed
from test_gramian_weighting import TINY, make, random_rows, stats, train_end_to_end, update, weigh
from torch.testing import assert_close
from torchjd.aggregation import NashMTL as Torchjd

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import GradientStats
from mtlbench.strategies.nash_mtl import NashMTL, gramian_factor, polished

F64 = torch.float64


def test_orthogonal_gradients_by_hand() -> None:
    # G = diag(9, 1/4): 9 α_1 = 1/α_1, α_2 / 4 = 1/α_2 → α = (1/3, 2) = 1/||g_i||, d = u_1 + u_2
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=F64)
    g = stats(a).gramian
    w = weigh(make("nash_mtl", max_norm=0.0), a)
    assert_close(w, torch.tensor([1 / 3, 2.0], dtype=F64), rtol=1e-14, atol=0.0)
    assert_close(g @ w, 1 / w, rtol=1e-14, atol=0.0)
    assert_close(update(w, a), torch.tensor([1.0, 1.0, 0.0], dtype=F64), rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_bargaining_condition(n: int) -> None:
    """Every task improves by g_i · d = (G α)_i = 1/α_i (ECOS's ≈1e-7, then Newton-polished), and
    it is FairGrad's α = 1 condition: the same weights as scipy finds for it."""
    for seed in range(4):
        a = random_rows(n, n + 3, seed=seed, spread=2.0)
        g = stats(a).gramian
        w = weigh(make("nash_mtl", max_norm=0.0), a)
        assert (w > 0).all()
        assert_close(w * (g @ w), torch.ones(n, dtype=F64), rtol=0.0, atol=1e-12)
        assert_close(w, weigh(make("fairgrad"), a), rtol=1e-6, atol=0.0)


@pytest.mark.filterwarnings("ignore:.*not DPP")
def test_torchjd_on_a_gramian_factor_is_torchjd_on_the_gradients() -> None:
    """torchjd's weighting takes a matrix J and only uses J Jᵀ: M = V Λ₊^½ (M Mᵀ = G) gives its
    weights for J to ECOS's tolerance (rounding in M Mᵀ moves its iterates), the same solution once
    polished; the strategy (solved on the cosines, polished) gets it too."""
    for n, seed in ((2, 0), (3, 1), (5, 2)):
        a = random_rows(n, n + 4, seed=seed, spread=1.0)
        g = stats(a).gramian
        m = gramian_factor(g)
        assert_close(m @ m.T, g, rtol=1e-13, atol=1e-13 * float(g.abs().max()))
        on_j = Torchjd(n_tasks=n, max_norm=0.0).weighting(a)
        on_m = Torchjd(n_tasks=n, max_norm=0.0).weighting(m)
        assert_close(on_m, on_j, rtol=1e-6, atol=0.0)
        assert_close(polished(g, on_m), polished(g, on_j), rtol=1e-12, atol=0.0)
        assert_close(weigh(make("nash_mtl", max_norm=0.0), a), polished(g, on_j), rtol=1e-12,
                     atol=0.0)


def test_max_norm_clips_the_shared_update_only() -> None:
    """||d||² = αᵀ G α = n at the solution, so max_norm = 1 scales every n ≥ 2 update to norm 1
    (w = α / √n); head i keeps α_i ∇L_i; max_norm = 10 > √n leaves it."""
    a = random_rows(3, 6, seed=4, spread=1.0)
    alpha = weigh(make("nash_mtl", max_norm=0.0), a)
    strategy = make("nash_mtl")
    shared, heads = strategy.decide(torch.ones(3, dtype=F64), stats(a))
    assert_close(shared, alpha / 3**0.5, rtol=1e-12, atol=0.0)
    assert_close(update(shared, a).norm(), torch.tensor(1.0, dtype=F64), rtol=1e-12, atol=0.0)
    assert_close(heads, alpha, rtol=1e-12, atol=0.0)
    assert_close(weigh(make("nash_mtl", max_norm=10.0), a), alpha, rtol=1e-12, atol=0.0)
    assert make("nash_mtl", heads="unweighted").decide(torch.ones(3), stats(a))[1] is None


def test_scale_invariant_to_rounding() -> None:
    """Task k's loss times λ: α_k / λ, the others and ||d|| unchanged (solved on the cosines)."""
    a = random_rows(4, 6, seed=5, spread=3.0)
    w = weigh(make("nash_mtl"), a)
    s = torch.tensor([1e-9, 3.0, 1e9, 0.02], dtype=F64)
    assert_close(weigh(make("nash_mtl"), s[:, None] * a) * s, w, rtol=1e-10, atol=0.0)
    assert make("nash_mtl").scale_invariant
    assert not make("nash_mtl", heads="unweighted").scale_invariant


def test_zero_gradient_task() -> None:
    """A zero gradient gets an orthogonal unit row: α_k = 1, the others solved without it."""
    a = random_rows(3, 5, seed=6, spread=1.0)
    a[1] = 0.0
    w = weigh(make("nash_mtl", max_norm=0.0), a)
    without = weigh(make("nash_mtl", max_norm=0.0), a[[0, 2]])
    assert_close(w, torch.stack([without[0], torch.tensor(1.0, dtype=F64), without[1]]),
                 rtol=1e-12, atol=0.0)


def test_dependent_gradients() -> None:
    """ECOS fails on a singular C and returns the previous α (ones); g_2 = g_1 has a solution,
    α_i (α_1 + α_2) = 1 on C, which the polish reaches; g_2 = −g_1 has none: α stays."""
    a = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64)
    assert_close(weigh(make("nash_mtl", max_norm=0.0), a), torch.full((2,), 0.5**0.5 / 5**0.5,
                                                                     dtype=F64))
    a[1] = -a[1]
    assert_close(weigh(make("nash_mtl", max_norm=0.0), a), torch.full((2,), 1 / 5**0.5,
                                                                     dtype=F64))


def test_non_finite_gramian_gives_nan_and_keeps_the_state() -> None:
    strategy = make("nash_mtl", update_weights_every=2)
    weigh(strategy, random_rows(2, 4, seed=9))
    state = copy.deepcopy(strategy.state_dict())
    bad = torch.tensor([[1.0, float("nan")], [float("nan"), 2.0]], dtype=F64)
    w = strategy.weights(torch.ones(2, dtype=F64), GradientStats(bad.diagonal().sqrt(), bad))
    assert torch.isnan(w).all()
    assert all(torch.equal(v, strategy.state_dict()[k]) for k, v in state.items())


def drifting(steps: range, n: int = 3) -> list[torch.Tensor]:
    """Per-step gradient rows [n, n + 3] that drift from one step to the next."""
    base, turn = random_rows(n, n + 3, seed=7, spread=1.0), random_rows(n, n + 3, seed=8)
    return [base + 0.3 * t * turn for t in steps]


def test_update_weights_every_reuses_the_weights() -> None:
    """k = 3: α solved at calls 0 and 3 and reused (as weights on the gradients) at 1, 2, 4."""
    rows = drifting(range(5))
    strategy = make("nash_mtl", max_norm=0.0, update_weights_every=3)
    got = [weigh(strategy, a) for a in rows]
    fresh = [weigh(make("nash_mtl", max_norm=0.0), a) for a in rows]
    for t, expected in ((0, 0), (1, 0), (2, 0), (3, 3), (4, 3)):
        assert torch.equal(got[t], got[expected])
    assert_close(got[3], fresh[3], rtol=1e-10, atol=0.0)
    assert not torch.allclose(got[1], fresh[1])
    # reused weights are clipped with the current Gramian
    clipped = make("nash_mtl", update_weights_every=3)
    for a, w in zip(rows, got, strict=True):
        norm = update(w, a).norm()
        assert_close(update(weigh(clipped, a), a).norm(), norm.clamp(max=1.0))


@pytest.mark.parametrize("overrides", [{}, {"update_weights_every": 2}, {"cr_mogm": 0.5}])
def test_state_dict_resumes_exactly(overrides: dict) -> None:
    """A state_dict taken mid-run and loaded into a fresh instance continues with the very same
    weights (the call counter, the last α and the solver's warm start)."""
    rows = drifting(range(6))
    strategy = make("nash_mtl", **overrides)
    for a in rows[:3]:
        weigh(strategy, a)
    state = copy.deepcopy(strategy.state_dict())
    rest = [weigh(strategy, a) for a in rows[3:]]
    resumed = make("nash_mtl", **overrides)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, weigh(resumed, a)) for x, a in zip(rest, rows[3:], strict=True))


def test_hyperparameters_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^Parameter `update_weights_every` must be an integer "
                       r">= 1\. Found `update_weights_every = 0`\.$"):
        NashMTL(update_weights_every=0)
    with pytest.raises(ConfigError, match=r"^Parameter `optim_niter` must be an integer >= 1\. "
                       r"Found `optim_niter = 2\.5`\.$"):
        NashMTL(optim_niter=2.5)
    with pytest.raises(ConfigError, match=r"^Parameter `max_norm` must be >= 0\. "
                       r"Found `max_norm = -1`\.$"):
        NashMTL(max_norm=-1)
    with pytest.raises(ConfigError, match=r"^Parameter `max_norm` must be a finite real number\. "
                       r"Found `max_norm = nan`\.$"):
        NashMTL(max_norm=float("nan"))


def test_missing_cvxpy_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec",
                        lambda mod, *a: None if mod == "cvxpy" else real(mod, *a))
    with pytest.raises(ConfigError) as info:
        make("nash_mtl")
    assert str(info.value) == "strategy=nash_mtl needs cvxpy: pip install 'mtlbench[solvers]'"


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    """The solver's state is in every checkpoint: a run killed after its step-4 checkpoint and
    resumed ends exactly as the uninterrupted one."""
    args = ["strategy=nash_mtl", *TINY, "trainer.max_steps=8", "trainer.eval_every=4",
            "trainer.checkpoint_every=4", "strategy.update_weights_every=3"]
    full, resumed = killed_and_resumed(args, "nash_mtl", tmp_path, at_step=4)
    assert resumed == full


@pytest.mark.slow
@pytest.mark.parametrize("params", ["shared", "representation"])
def test_trains_end_to_end(tmp_path: Path, params: str) -> None:
    train_end_to_end(tmp_path, "nash_mtl", params)
