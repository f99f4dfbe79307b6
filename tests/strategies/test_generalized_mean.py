"""Generalized (power) mean of the losses, eq. (8)-(9)."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest
import torch
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import LOSS_FLOOR, SetupContext
from mtlbench.strategies.equal import Equal
from mtlbench.strategies.generalized_mean import (
    LOGSUMEXP_GAMMA,
    SERIES_GAMMA,
    GeneralizedMean,
)
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


@pytest.mark.parametrize("gamma", [-7.0, -1.0, -0.3, -1e-9, 5e-324, 0.0, 1e-12, 1e-8, 1e-3, 0.2,
                                   0.25, 0.5, 1.0, 2.0, 5.0, INF, -INF])
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
    # the zero loss counts as 1e-12, so min ≤ L(γ) ≤ max holds up to that
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


# ----------------------------------------------------------------------------- γ near 0
def reference_weights(gamma: float, losses: torch.Tensor, digits: int = 400) -> list[float]:
    """w_i = (1/n) (L_i / L(γ))^(γ-1) in ``digits``-digit decimal arithmetic (L(0): the geometric
    mean), from the exact binary values of γ and the losses. 400 digits resolve γ = 5e-324."""
    with localcontext() as ctx:
        ctx.prec = digits
        g = Decimal(gamma)
        logs = [Decimal(v).ln() for v in losses.tolist()]
        n = len(logs)
        # log L(γ) (eq. 8), or for γ = 0 the log of the geometric mean (eq. 7)
        log_m = sum(logs) / n if g == 0 else (sum((g * x).exp() for x in logs) / n).ln() / g
        return [float(((g - 1) * (x - log_m)).exp() / n) for x in logs]


TINY_GAMMAS = [5e-324, -5e-324, 1e-300, -1e-300, 1e-17, -1e-17, 1e-15, -1e-15, 1e-12, 1e-10,
               -1e-9, 1e-8, -1e-8, 2e-8, 1e-6, -1e-4]


@pytest.mark.parametrize("gamma", TINY_GAMMAS + [0.0, 1e-3, -0.1, 0.2, 0.25, 0.3, -0.6, 2.0, 40.0])
@pytest.mark.parametrize("seed", range(3))
def test_weights_match_a_400_digit_reference(gamma, seed):
    """Every branch (series, expm1/log1p, softmax) is exact to round-off, losses 1e-12 … 1e8."""
    losses = seeded_losses(seed, n=5, lo=-12.0, hi=8.0)
    got = GeneralizedMean(gamma=gamma).weights(losses)
    want = torch.tensor(reference_weights(gamma, losses), dtype=F64)
    # exp() turns the absolute round-off of log w (≈ ulp(|log w|)) into relative error
    rtol = 1e-13 * max(1.0, float(want.log().abs().max()) / 50)
    assert_close(got, want, rtol=rtol, atol=0)


@pytest.mark.parametrize("gamma", TINY_GAMMAS)
@pytest.mark.parametrize("seed", range(4))
def test_tiny_gamma_moves_the_weights_continuously_from_geometric(gamma, seed):
    """w(γ) → w(0) with the first-order term of the γ-expansion: with d_i = log L_i − mean log L,
    log w_i(γ) = log w_i(0) + γ (d_i + var(d)/2) + O(γ² max|d|⁴) (eq. 8 around eq. 7). Old code:
    γ = 1e-15 was 22 % off, 1e-16 17x off, 1e-17 … 1e-300 gave weights exactly 1, 5e-324 NaN."""
    losses = seeded_losses(seed, n=2 + seed, lo=-12.0, hi=8.0)
    w0 = GeneralizedMean(gamma=0.0).weights(losses)
    w = GeneralizedMean(gamma=gamma).weights(losses)
    assert torch.isfinite(w).all()
    d = losses.log() - losses.log().mean()
    spread = float(d.abs().max())
    first_order = gamma * (d + (d * d).mean() / 2)
    # |w(γ) − w(0)| ≤ |γ|·(spread + spread²/2)·w(0), and more precisely the first-order term
    assert ((w / w0 - 1).abs() <= abs(gamma) * (spread + spread**2 / 2) * 1.01 + 3e-14).all()
    assert_close(w / w0 - 1, first_order, rtol=0, atol=gamma**2 * spread**4 + 3e-14)
    assert_close(GeneralizedMean(gamma=gamma).objective(losses),
                 GeneralizedMean(gamma=0.0).objective(losses),
                 rtol=abs(gamma) * spread**2 + 1e-14, atol=0)


@pytest.mark.parametrize("switch", [SERIES_GAMMA, LOGSUMEXP_GAMMA])
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("seed", range(4))
def test_continuous_across_the_branch_switches(switch, sign, seed):
    """Just below, at and just above each switch point the weights (and objective) agree."""
    losses = seeded_losses(seed, n=5, lo=-12.0, hi=8.0)
    at = sign * switch
    below, above = math.nextafter(at, 0.0), math.nextafter(at, sign * INF)
    for gamma in (below, math.nextafter(below, 0.0), above, math.nextafter(above, sign * INF)):
        near = GeneralizedMean(gamma=gamma)
        assert_close(near.weights(losses), GeneralizedMean(gamma=at).weights(losses),
                     rtol=1e-12, atol=0)
        assert_close(near.objective(losses), GeneralizedMean(gamma=at).objective(losses),
                     rtol=1e-12, atol=0)


@pytest.mark.parametrize("gamma", [5e-324, -1e-300, 1e-17, 1e-15, 1e-8, 1e-3])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_tiny_gamma_with_zero_and_extreme_losses_is_finite(gamma, dtype):
    """A zero loss counts as LOSS_FLOOR = 2⁻²³; the positive 1e-24 is used as it is."""
    losses = torch.tensor([0.0, 1e-24, 1e20, 1.0], dtype=dtype)
    w = GeneralizedMean(gamma=gamma).weights(losses)
    assert w.dtype == dtype and torch.isfinite(w).all() and (w > 0).all()
    floored = torch.tensor([LOSS_FLOOR, 1e-24, 1e20, 1.0], dtype=dtype)
    want = torch.tensor(reference_weights(gamma, floored), dtype=F64)
    assert_close(w.double(), want, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
