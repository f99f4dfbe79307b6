"""Generalized (power) mean of the losses, eq. (8)-(9)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.equal import Equal
from mtlbench.strategies.generalized_mean import GeneralizedMean
from mtlbench.strategies.geometric import Geometric
from mtlbench.tasks import TaskSpec

INF = math.inf
F64 = torch.float64


def autograd_weights(strategy, losses):
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(x), x)
    return grad


def seeded_losses(seed, n=4, lo=-3.0, hi=3.0):
    """Log-uniform losses in [10^lo, 10^hi] (distinct with probability 1)."""
    gen = torch.Generator().manual_seed(seed)
    return 10.0 ** (lo + (hi - lo) * torch.rand(n, dtype=F64, generator=gen))


@pytest.mark.parametrize(
    ("gamma", "objective", "weights"),
    [
        # (1² + 4²)/2 = 8.5 → L = sqrt(8.5); w_i = L_i / (n L) (d/dL_i sqrt(mean L²))
        (2.0, math.sqrt(8.5), [1 / (2 * math.sqrt(8.5)), 4 / (2 * math.sqrt(8.5))]),
        # arithmetic mean (1 + 4)/2 = 2.5; w = 1/n
        (1.0, 2.5, [0.5, 0.5]),
        # geometric mean sqrt(4) = 2; w_i = L / (n L_i) = (1, 1/4)
        (0.0, 2.0, [1.0, 0.25]),
        # harmonic mean 2 / (1 + 1/4) = 1.6; w_i = (1/n)(L_i/L)^(-2) = (0.5 · 1.6², 0.5 · 0.4²)
        (-1.0, 1.6, [1.28, 0.08]),
        # (1 + 2)/2 = 1.5 → L = 1.5² = 2.25; w_i = (1/n)(L_i/L)^(-1/2) = (0.5 · 1.5, 0.5 · 0.75)
        (0.5, 2.25, [0.75, 0.375]),
        (INF, 4.0, [0.0, 1.0]),
        (-INF, 1.0, [1.0, 0.0]),
    ],
)
def test_hand_values_for_one_and_four(gamma, objective, weights):
    strategy = GeneralizedMean(gamma=gamma)
    losses = torch.tensor([1.0, 4.0], dtype=F64)
    assert strategy.objective(losses).item() == pytest.approx(objective, rel=1e-14)
    assert strategy.weights(losses).tolist() == pytest.approx(weights, rel=1e-14)


def test_hand_value_three_tasks_cubic():
    # γ = 3, L = (1, 2, 3): mean of cubes (1 + 8 + 27)/3 = 12 → L = 12^(1/3);
    # w_i = (1/n)(L_i/L)², i.e. (1, 4, 9) / (3 · 12^(2/3))
    strategy = GeneralizedMean(gamma=3.0)
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    assert strategy.objective(losses).item() == pytest.approx(12 ** (1 / 3), rel=1e-14)
    c = 3 * 12 ** (2 / 3)
    assert strategy.weights(losses).tolist() == pytest.approx([1 / c, 4 / c, 9 / c], rel=1e-14)


@pytest.mark.parametrize("gamma", [-7.0, -1.0, -0.3, 0.0, 1e-3, 0.5, 1.0, 2.0, 5.0, INF, -INF])
@pytest.mark.parametrize("seed", range(3))
def test_weights_equal_autograd_of_objective(gamma, seed):
    strategy = GeneralizedMean(gamma=gamma)
    losses = seeded_losses(seed, n=5)
    assert_close(strategy.weights(losses), autograd_weights(strategy, losses), rtol=1e-12, atol=0)


@pytest.mark.parametrize("gamma", [INF, -INF])
def test_ties_at_the_extreme_share_the_weight(gamma):
    losses = torch.tensor([3.0, 3.0, 2.0, 3.0], dtype=F64) if gamma > 0 else \
        torch.tensor([1.0, 2.0, 1.0, 5.0], dtype=F64)
    strategy = GeneralizedMean(gamma=gamma)
    w = strategy.weights(losses)
    expected = [1 / 3, 1 / 3, 0.0, 1 / 3] if gamma > 0 else [0.5, 0.0, 0.5, 0.0]
    assert w.tolist() == pytest.approx(expected, rel=1e-15)
    assert_close(w, autograd_weights(strategy, losses), rtol=1e-15, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_infinite_gamma_is_max_and_min(seed):
    losses = seeded_losses(seed)
    assert GeneralizedMean(gamma=INF).objective(losses).item() == losses.max().item()
    assert GeneralizedMean(gamma=-INF).objective(losses).item() == losses.min().item()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma", [50.0, 1e3, 1e6])
def test_large_finite_gamma_approaches_the_limits(seed, gamma):
    n = 4
    losses = seeded_losses(seed, n=n)
    hi = GeneralizedMean(gamma=gamma).objective(losses).item()
    lo = GeneralizedMean(gamma=-gamma).objective(losses).item()
    # max · n^(-1/γ) ≤ L(γ) ≤ max and min ≤ L(−γ) ≤ min · n^(1/γ)
    assert losses.max().item() * n ** (-1 / gamma) * (1 - 1e-12) <= hi <= losses.max().item()
    assert losses.min().item() <= lo <= losses.min().item() * n ** (1 / gamma) * (1 + 1e-12)
    # the weights approach one-hot at the arg-max / arg-min
    w_hi = GeneralizedMean(gamma=gamma).weights(losses)
    w_lo = GeneralizedMean(gamma=-gamma).weights(losses)
    if gamma >= 1e3:
        assert_close(w_hi, GeneralizedMean(gamma=INF).weights(losses), rtol=0, atol=1e-2)
        assert_close(w_lo, GeneralizedMean(gamma=-INF).weights(losses), rtol=0, atol=1e-2)
    assert w_hi.argmax() == losses.argmax() and w_lo.argmax() == losses.argmin()


GAMMAS = [-INF, -1e3, -20.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 3.0, 20.0, 1e3, INF]


@pytest.mark.parametrize("seed", range(6))
def test_monotone_in_gamma_and_between_min_and_max(seed):
    losses = seeded_losses(seed, n=2 + seed % 4, lo=-6, hi=6)
    values = [GeneralizedMean(gamma=g).objective(losses).item() for g in GAMMAS]
    for a, b in zip(values, values[1:], strict=False):
        assert a <= b * (1 + 1e-13)
    # strictly increasing away from the (numerically saturated) ends, losses being distinct
    middle = values[2:-2]
    assert all(a < b for a, b in zip(middle, middle[1:], strict=False))
    lo, hi = losses.min().item(), losses.max().item()
    assert all(lo * (1 - 1e-13) <= v <= hi * (1 + 1e-13) for v in values)


def test_all_equal_losses_give_that_loss_for_every_gamma():
    losses = torch.full((3,), 0.7, dtype=F64)
    for g in GAMMAS:
        strategy = GeneralizedMean(gamma=g)
        assert strategy.objective(losses).item() == pytest.approx(0.7, rel=1e-14)
        if math.isfinite(g):
            assert strategy.weights(losses).tolist() == pytest.approx([1 / 3] * 3, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_gamma_one_is_equal_weights(seed):
    losses = seeded_losses(seed, n=5)
    gm, eq = GeneralizedMean(gamma=1.0), Equal()
    assert_close(gm.weights(losses), eq.weights(losses), rtol=1e-14, atol=0)
    assert_close(gm.objective(losses), eq.objective(losses), rtol=1e-14, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_gamma_zero_is_geometric_and_the_limit_of_small_gamma(seed):
    losses = seeded_losses(seed, n=5)
    gm, geo = GeneralizedMean(gamma=0.0), Geometric()
    assert_close(gm.weights(losses), geo.weights(losses), rtol=1e-13, atol=0)
    assert_close(gm.objective(losses), geo.objective(losses), rtol=1e-13, atol=0)
    for eps in (1e-6, -1e-6):
        near = GeneralizedMean(gamma=eps)
        # log L(γ) = mean log L + γ/2 · var(log L) + O(γ²): relative error ~ 1e-6 · var ≲ 1e-4
        assert_close(near.objective(losses), gm.objective(losses), rtol=1e-4, atol=0)
        assert_close(near.weights(losses), gm.weights(losses), rtol=1e-4, atol=0)


@pytest.mark.parametrize("gamma", [-1e6, -INF, -5.0, -1.0, 0.0, 0.5, 1.0, 2.0, 7.0, 1e6, INF])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_extreme_losses_are_stable(gamma, dtype):
    losses = torch.tensor([0.0, 1e-12, 1e8, 1.0], dtype=dtype)
    strategy = GeneralizedMean(gamma=gamma)
    w = strategy.weights(losses)
    assert w.dtype == dtype and w.shape == (4,)
    assert torch.isfinite(w).all() and (w >= 0).all() and (w > 0).any()
    value = strategy.objective(losses)
    assert torch.isfinite(value)
    # the floor is 1e-12, so min ≤ L(γ) ≤ max holds up to it
    assert 0.0 <= value.item() <= 1e8 * (1 + 1e-6)
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(x), x)
    assert torch.isfinite(grad).all()


def test_big_gamma_with_huge_losses_does_not_overflow():
    # 1e8^50 = 1e400 overflows float64 unless computed in log space
    losses = torch.tensor([1e8, 3e8], dtype=F64)
    strategy = GeneralizedMean(gamma=50.0)
    expected = math.exp((math.log(1 + 3.0**50) - math.log(2)) / 50) * 1e8
    assert strategy.objective(losses).item() == pytest.approx(expected, rel=1e-12)
    assert torch.isfinite(strategy.weights(losses)).all()


@pytest.mark.parametrize("gamma", [math.nan, "nan", "steep", None, True, [1.0]])
def test_invalid_gamma_is_rejected(gamma):
    with pytest.raises(ConfigError, match=r"^Parameter `gamma` must be a real number or ±inf\. "
                                          r"Found `gamma = ") as info:
        GeneralizedMean(gamma=gamma)
    assert "\n" not in str(info.value)


def test_nan_message_is_exact():
    with pytest.raises(ConfigError) as info:
        GeneralizedMean(gamma=math.nan)
    assert str(info.value) == ("Parameter `gamma` must be a real number or ±inf. "
                               "Found `gamma = nan`.")


@pytest.mark.parametrize(("given", "expected"),
                         [("inf", INF), ("-inf", -INF), (2, 2.0), ("0.5", 0.5)])
def test_gamma_accepts_command_line_spellings(given, expected):
    assert GeneralizedMean(gamma=given).gamma == expected


def test_setup_and_state_dict_are_trivial():
    strategy = GeneralizedMean(gamma=3.0)
    strategy.setup(SetupContext(tasks=[TaskSpec("a", "regression", 1)]))
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})


@pytest.mark.parametrize(("gamma", "scale", "shift"),
                         [(0.0, True, False), (1.0, False, True), (2.0, False, False),
                          (-INF, False, False), (INF, False, False)])
def test_invariance_claims_depend_on_gamma(gamma, scale, shift):
    strategy = GeneralizedMean(gamma=gamma)
    assert strategy.scale_invariant is scale
    assert strategy.shift_invariant is shift
