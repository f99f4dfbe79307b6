"""Property checks shared by every strategy in ``conf/strategy/*.yaml`` (found by globbing).

Each strategy is instantiated from its composed Hydra config and evaluated on a seeded "world": task
specs (classification and regression), training targets, raw losses, raw initial losses and raw
per-task gradients A [n, m] (Gramian G = A Aᵀ). Transforming a task's loss (``loss_scale`` λ,
``loss_shift`` c) transforms everything a strategy can read consistently: its loss, its measured and
derived initial loss, its prior loss, and (for λ) its gradient row. The checks:

* valid weights (finite, ≥ 0, shape [n], one > 0) for loss magnitudes from 0 to 1e20, zero
  gradients, float32 and float64;
* task-permutation equivariance;
* the invariances each strategy claims with ``Strategy.scale_invariant`` / ``shift_invariant``
  (eq. 2-4, 7, 10-11): the update direction Σ_i w_i ∇L_i is unchanged, for base losses from 1e-12
  to 1e8, per-task gradient norms spread over 1e-6 … 1e6, and one task's loss (and gradient) scaled
  by any λ in 1e-12 … 1e12 (so losses 1e-24 … 1e20) or shifted by c in 1e-12 … 1e8; in float64,
  and in float32 (losses, gradients, weights) with the float64 statistics the loop computes;
* for the loss-side strategies, that the claims are not vacuous: a non-claimed invariance fails.

Each kind is driven as the loop drives it: loss-side strategies through ``weights``, Gramian
weightings through ``decide`` (``GradientStats`` of the seeded gradients; their stacked loss
weighting included), combiners through ``combine`` (the per-task gradients themselves). The
invariance checks cover the whole update: the shared part and the heads' factors (``heads``
policy: a head left unweighted keeps its own ∇L_i).

A strategy whose ``setup`` refuses a task set (e.g. ``single_task`` with n > 1) is skipped for it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.stats import PerTaskGradients
from mtlbench.strategies.base import GradientStats, SetupContext, Strategy, parts
from mtlbench.tasks import TaskSpec

F64 = torch.float64
STRATEGY_DIR = Path(__file__).resolve().parents[2] / "conf" / "strategy"
NAMES = sorted(p.stem for p in STRATEGY_DIR.glob("*.yaml"))

#: Extra hyperparameters checked on top of every YAML's defaults (a missing YAML is left out).
EXTRA = [
    ("generalized_mean", {"gamma": 0.0}),
    ("generalized_mean", {"gamma": -2.0}),
    ("generalized_mean", {"gamma": 3.0}),
    ("generalized_mean", {"gamma": math.inf}),
    ("generalized_mean", {"gamma": -math.inf}),
    ("init_loss", {"source": "derived"}),
    ("static", {"weights": {"t0": 2.5}}),
    ("gradnorm_ideal", {"rescale": "mean"}),
    ("gradnorm_ideal", {"params": "representation", "log_losses": True, "rescale": "max"}),
    ("gradnorm_ideal", {"heads": "unweighted"}),
    ("config_grad", {"heads": "weighted"}),
    ("gradvac", {"normalize": True, "heads": "weighted"}),
    ("mgda", {"normalize": True, "heads": "weighted"}),
]
VARIANTS = [(name, {}) for name in NAMES] + [(n, o) for n, o in EXTRA if n in NAMES]
IDS = [name + "".join(f"[{k}={v}]" for k, v in o.items()) for name, o in VARIANTS]
SIZES = [1, 2, 3, 5]


@functools.cache
def _node(name: str) -> dict[str, Any]:
    """The ``strategy`` node exactly as ``mtlbench train strategy=<name>`` composes it."""
    return OmegaConf.to_container(compose_config([f"strategy={name}"]).strategy, resolve=True)


_PROTOTYPES: dict[str, Strategy] = {}


def make_strategy(name: str, overrides: dict[str, Any]) -> Strategy:
    """A fresh (never set up) instance, instantiated from the composed node with ``overrides``.
    A deep copy of a cached, never set up prototype is one, and is cheaper than instantiating."""
    key = repr((name, sorted(overrides.items())))
    if key not in _PROTOTYPES:
        _PROTOTYPES[key] = instantiate({**_node(name), **overrides}, _convert_="all")
    return copy.deepcopy(_PROTOTYPES[key])


def claims(attribute: str) -> list[Any]:
    """The variants that claim ``attribute``, as pytest params. A variant that cannot be
    instantiated is kept, so that the checks fail on it loudly instead of dropping it."""
    out = []
    for (name, overrides), id_ in zip(VARIANTS, IDS, strict=True):
        try:
            claimed = getattr(make_strategy(name, overrides), attribute)
        except Exception:  # noqa: BLE001 (reported by the tests themselves)
            claimed = True
        if claimed:
            out.append(pytest.param(name, overrides, id=id_))
    return out


# ----------------------------------------------------------------------------- the seeded world
@dataclasses.dataclass
class World:
    tasks: list[TaskSpec]
    raw_losses: Tensor  # [n]
    raw_init: Tensor  # [n], what measure_losses reports before the transform
    raw_grads: Tensor  # [n, m], per-task gradients before the transform
    targets: dict[str, Tensor]

    @property
    def n(self) -> int:
        return len(self.tasks)

    def scales(self) -> Tensor:
        return torch.tensor([t.loss_scale for t in self.tasks], dtype=F64)

    def shifts(self) -> Tensor:
        return torch.tensor([t.loss_shift for t in self.tasks], dtype=F64)

    def losses(self) -> Tensor:
        return self.scales() * self.raw_losses + self.shifts()

    def grads(self) -> GradientStats:
        a = self.scales()[:, None] * self.raw_grads
        gramian = a @ a.T
        return GradientStats(norms=gramian.diagonal().clamp_min(0).sqrt(), gramian=gramian)

    def context(self) -> SetupContext:
        init = self.scales() * self.raw_init + self.shifts()
        return SetupContext(tasks=list(self.tasks), train_targets=dict(self.targets),
                            measure_losses=lambda k: init.clone())

    def scaled(self, k: int, lam: float) -> World:
        tasks = list(self.tasks)
        tasks[k] = dataclasses.replace(tasks[k], loss_scale=tasks[k].loss_scale * lam)
        return dataclasses.replace(self, tasks=tasks)

    def shifted(self, k: int, c: float) -> World:
        tasks = list(self.tasks)
        tasks[k] = dataclasses.replace(tasks[k], loss_shift=tasks[k].loss_shift + c)
        return dataclasses.replace(self, tasks=tasks)

    def permuted(self, perm: Tensor) -> World:
        return World([self.tasks[i] for i in perm.tolist()], self.raw_losses[perm],
                     self.raw_init[perm], self.raw_grads[perm], self.targets)


def make_world(n: int, seed: int, lo: float = -12.0, hi: float = 8.0,
               special: tuple[float, ...] = (), grad_spread: float = 0.0) -> World:
    """n tasks alternating classification (K = 2 + i, skewed labels) and regression (d = 1 + i % 3),
    log-uniform raw losses in [10^lo, 10^hi] (the first ones replaced by ``special``), standard
    normal raw gradients, each task's row times 10^u with u uniform in ±``grad_spread``."""
    gen = torch.Generator().manual_seed(1000 * n + seed)
    tasks, targets = [], {}
    for i in range(n):
        name = f"t{i}"
        if i % 2 == 0:
            k = 2 + i
            tasks.append(TaskSpec(name, "classification", k))
            probs = torch.softmax(-0.7 * torch.arange(k, dtype=F64), 0)
            labels = torch.multinomial(probs, 40, replacement=True, generator=gen)
            targets[name] = torch.cat([torch.arange(k), labels])  # every class present
        else:
            d = 1 + i % 3
            tasks.append(TaskSpec(name, "regression", d))
            targets[name] = 3.0 + 10.0 ** i * torch.randn(40, d, dtype=F64, generator=gen)
    raw = 10.0 ** (lo + (hi - lo) * torch.rand(n, dtype=F64, generator=gen))
    for i, value in enumerate(special[:n]):
        raw[i] = value
    init = 10.0 ** (-1 + 2 * torch.rand(n, dtype=F64, generator=gen))
    grads = torch.randn(n, n + 3, dtype=F64, generator=gen)
    if grad_spread:
        grads *= 10.0 ** (grad_spread * (2 * torch.rand(n, 1, dtype=F64, generator=gen) - 1))
    return World(tasks, raw, init, grads, targets)


@dataclasses.dataclass
class Step:
    """What the loop applies: head i gets w_i ∇L_i; the shared parameters get ``update``."""

    weights: Tensor  # [n], the logged coefficients of the shared update
    update: list[Tensor]  # one tensor per (fake) shared parameter
    heads: Tensor  # [n], the factor of head i's gradient ∇L_i
    nonnegative: bool = True  # the strategy's ``nonnegative_weights`` claim


def step_in(world: World, name: str, overrides: dict[str, Any], dtype: torch.dtype = F64,
            stats_dtype: torch.dtype | None = None) -> Step:
    """A fresh strategy's step in ``world``, computed as the training loop computes it. The shared
    parameters are two fake ones whose per-task gradients are the columns 0:2 and 2: of the
    transformed gradients diag(loss_scale) A. Losses and gradients are in ``dtype``, the gradient
    statistics in ``stats_dtype`` (default: ``dtype``; the loop's are float64)."""
    strategy = make_strategy(name, overrides)
    torch.manual_seed(20261129)  # random strategies (PCGrad) draw the same numbers in every call
    try:
        for part in parts(strategy):
            part.setup(world.context())
    except ConfigError as error:
        pytest.skip(f"{name} refuses this task set: {error}")
    a = (world.scales()[:, None] * world.raw_grads).to(dtype)
    per_task = [a[:, :2], a[:, 2:]]
    losses = world.losses().to(dtype)
    stats = world.grads()
    stats = GradientStats(stats.norms.to(stats_dtype or dtype),
                          stats.gramian.to(stats_dtype or dtype))
    ones = torch.ones_like(losses)
    if strategy.kind == "combiner":
        out = strategy.combine(losses, PerTaskGradients([g.clone() for g in per_task], stats))
        heads = ones if out.head_weights is None else out.head_weights
        return Step(out.weights, list(out.update), heads, strategy.nonnegative_weights)
    if strategy.kind == "gramian":
        w, heads = strategy.decide(losses, stats)
    else:
        w = heads = strategy.weights(losses, None)
    return Step(w, [torch.tensordot(w, g, dims=1) for g in per_task],
                ones if heads is None else heads, strategy.nonnegative_weights)


def assert_valid(step: Step, n: int, dtype: torch.dtype = F64, some_positive: bool = True) -> None:
    w = step.weights
    assert w.shape == (n,), w.shape
    assert w.dtype == dtype
    assert torch.isfinite(w).all(), w
    assert (w >= 0).all() or not step.nonnegative, w
    assert not some_positive or (w > 0).any() or not step.nonnegative, w
    assert all(torch.isfinite(u).all() for u in step.update), step.update


def assert_close_update(got: list[Tensor], expected: list[Tensor], rtol: float = 1e-9) -> None:
    scale = max(float(u.abs().max()) for u in expected)
    for a, b in zip(got, expected, strict=True):
        assert_close(a, b, rtol=rtol, atol=rtol * scale + 1e-300)


def assert_same_direction(u: Tensor, w: Tensor, rtol: float = 1e-9) -> float:
    """u = c · w for one c > 0; returns c."""
    j = int(w.argmax())
    c = u[j] / w[j]
    assert torch.isfinite(c) and c > 0, (u, w)
    assert_close(u, c * w, rtol=rtol, atol=1e-300)
    return float(c)


def direction_gap(u: Tensor, w: Tensor) -> float:
    """Largest relative deviation of u from the best multiple of w."""
    j = int(w.argmax())
    c = u[j] / w[j]
    return float(((u - c * w).abs() / (c * w).abs().clamp_min(1e-300)).max())


def weights_in(world: World, name: str, overrides: dict[str, Any]) -> Tensor:
    return step_in(world, name, overrides).weights


# ----------------------------------------------------------------------------- the checks
def test_every_yaml_is_checked():
    assert {"equal", "static", "init_loss", "prior_loss", "realtime", "geometric",
            "generalized_mean"} <= set(NAMES)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=IDS)
def test_valid_weights(name, overrides, n):
    for seed in range(4):
        assert_valid(step_in(make_world(n, seed), name, overrides), n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=IDS)
def test_no_nan_at_extreme_losses_and_zero_gradients(name, overrides, n):
    for special in ((0.0, 1e-12, 1e8), (1e8, 0.0, 1e-12), (1e-12, 1e8, 0.0), (1e20, 0.0, 1e-24)):
        for dtype in (torch.float32, F64):
            world = make_world(n, seed=7, special=special)
            assert_valid(step_in(world, name, overrides, dtype), n, dtype)
            world.raw_grads[0] = 0.0  # a task whose gradient norm is exactly 0
            assert_valid(step_in(world, name, overrides, dtype), n, dtype)
    world = make_world(n, seed=8)
    world.raw_grads.zero_()  # every gradient is 0: no update anyway, so all-zero weights are fine
    assert_valid(step_in(world, name, overrides), n, some_positive=False)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=IDS)
def test_permutation_equivariance(name, overrides, n):
    if not make_strategy(name, overrides).deterministic:
        pytest.skip(f"{name} draws random numbers (deterministic = False)")
    for seed in range(3):
        world = make_world(n, seed)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        step, permuted = step_in(world, name, overrides), step_in(world.permuted(perm), name,
                                                                   overrides)
        assert_close(permuted.weights, step.weights[perm], rtol=1e-10, atol=1e-300)
        assert_close(permuted.heads, step.heads[perm], rtol=1e-10, atol=1e-300)
        assert_close_update(permuted.update, step.update, rtol=1e-10)


#: One task's loss (and gradient) is multiplied by λ: with base losses 1e-12 … 1e8 that spans
#: losses 1e-24 … 1e20 (old code: a 1e-12 loss floor and an absolute 1e-8 gradient-norm floor, and
#: float32 squared norms, broke the claims outside roughly 1e-8 … 1e16).
SCALES = (1e-12, 1e-6, 1e-3, 0.37, 1e3, 1e6, 1e12)
#: Shifts c added to one task's loss (base losses 1e-12 … 1e8).
SHIFTS = (1e-12, 0.5, 7.0, 1e4, 1e8)


def check_scale_invariance(world: World, name: str, overrides: dict[str, Any],
                           dtype: torch.dtype, rtol: float) -> None:
    step = step_in(world, name, overrides, dtype, stats_dtype=F64)
    n = world.n
    for k in range(n):
        for lam in SCALES:
            # task k's loss and gradient are λ times larger: head k's update is w'_k · λ ∇L_k,
            # so the update keeps its direction iff w' · s = c · w and update' = c · update
            scaled = step_in(world.scaled(k, lam), name, overrides, dtype, stats_dtype=F64)
            s = torch.ones(n, dtype=F64)
            s[k] = lam
            c = assert_same_direction(scaled.heads.double() * s, step.heads.double(), rtol)
            assert_close_update([u.double() for u in scaled.update],
                                [c * u.double() for u in step.update], rtol)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(("name", "overrides"), claims("scale_invariant"))
def test_claimed_scale_invariance(name, overrides, n):
    assert make_strategy(name, overrides).scale_invariant
    for seed in range(3):
        check_scale_invariance(make_world(n, seed, grad_spread=6.0), name, overrides, F64, 1e-9)


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize(("name", "overrides"), claims("scale_invariant"))
def test_claimed_scale_invariance_in_float32(name, overrides, n):
    """The same in float32 (what the loop runs), statistics in float64 as the loop computes them:
    1/L_i, 1/||g_i|| and the squared norms of 1e-24 … 1e20 stay in range."""
    for seed in range(2):
        check_scale_invariance(make_world(n, seed, grad_spread=6.0), name, overrides,
                               torch.float32, 1e-5)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(("name", "overrides"), claims("shift_invariant"))
def test_claimed_shift_invariance(name, overrides, n):
    assert make_strategy(name, overrides).shift_invariant
    for seed in range(3):
        world = make_world(n, seed, grad_spread=6.0)
        step = step_in(world, name, overrides)
        for k in range(n):
            for c in SHIFTS:
                # gradients are unchanged by a shift: weights and update must be proportional
                shifted = step_in(world.shifted(k, c), name, overrides)
                factor = assert_same_direction(shifted.heads, step.heads)
                assert_close_update(shifted.update, [factor * u for u in step.update])


#: Loss-side settings that must *not* be scale-invariant; the claims above would be vacuous if
#: these passed them too.
NOT_SCALE_INVARIANT = [
    ("equal", {}),
    ("static", {}),
    ("generalized_mean", {"gamma": 1.0}),
    ("generalized_mean", {"gamma": 3.0}),
    ("generalized_mean", {"gamma": -2.0}),
    ("generalized_mean", {"gamma": math.inf}),
]
NOT_SHIFT_INVARIANT = [
    ("realtime", {}),
    ("geometric", {}),
    ("init_loss", {"source": "measured"}),
    ("init_loss", {"source": "derived"}),
    ("prior_loss", {}),
    ("generalized_mean", {"gamma": 0.0}),
    ("generalized_mean", {"gamma": 3.0}),
]


def _ids(cases):
    return [name + "".join(f"[{k}={v}]" for k, v in o.items()) for name, o in cases]


@pytest.mark.parametrize(("name", "overrides"), NOT_SCALE_INVARIANT, ids=_ids(NOT_SCALE_INVARIANT))
def test_scale_changes_direction_when_not_claimed(name, overrides):
    assert not make_strategy(name, overrides).scale_invariant
    world = make_world(3, seed=0, lo=-1.0, hi=1.0)
    w = weights_in(world, name, overrides)
    # scaling the largest loss by 1e3 (and, for γ = inf, then the smallest one above it)
    k = int(world.raw_losses.argmin()) if name == "generalized_mean" else 0
    s = torch.ones(3, dtype=F64)
    s[k] = 1e3
    assert direction_gap(weights_in(world.scaled(k, 1e3), name, overrides) * s, w) > 0.1


@pytest.mark.parametrize(("name", "overrides"), NOT_SHIFT_INVARIANT, ids=_ids(NOT_SHIFT_INVARIANT))
def test_shift_changes_direction_when_not_claimed(name, overrides):
    assert not make_strategy(name, overrides).shift_invariant
    world = make_world(3, seed=0, lo=-1.0, hi=1.0)
    w = weights_in(world, name, overrides)
    assert direction_gap(weights_in(world.shifted(0, 5.0), name, overrides), w) > 0.1


def test_claims_match_the_post():
    """eq. (2), (3), (4), (7) claim scale invariance; none of the loss-side ones shift invariance
    except the loss-independent weightings (equal, static, γ = 1)."""
    expected = {("realtime", ()): (True, False), ("geometric", ()): (True, False),
                ("init_loss", ()): (True, False), ("prior_loss", ()): (True, False),
                ("equal", ()): (False, True), ("static", ()): (False, True),
                ("generalized_mean", (("gamma", 0.0),)): (True, False),
                ("generalized_mean", (("gamma", 1.0),)): (False, True),
                ("generalized_mean", (("gamma", 2.0),)): (False, False)}
    for (name, overrides), claims in expected.items():
        strategy = make_strategy(name, dict(overrides))
        assert (strategy.scale_invariant, strategy.shift_invariant) == claims, name


# ----------------------------------------------------------------------------- separable weightings
SEPARABLE = [pytest.param(name, overrides, id=id_) for (name, overrides), id_
             in zip(VARIANTS, IDS, strict=True)
             if getattr(make_strategy(name, overrides), "separable", False)]


def test_separable_claims_cover_gradnorm_ideal_and_stay_opt_in():
    separable = {p.values[0] for p in SEPARABLE}
    assert "gradnorm_ideal" in separable
    assert not {"mgda", "upgrad", "imtl_g", "db_mtl", "equal"} & separable


def separated_step(strategy: Strategy, losses: Tensor, stats: GradientStats,
                   per_task: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """What the loop's running sum computes: h_i one task at a time, then c; the weights
    c · h and the update c · Σ_i h_i g_i."""
    each = losses.split(1)
    own = torch.cat([strategy.own_factors(each[i], stats.norms[i:i + 1])
                     for i in range(len(losses))])
    common = strategy.common_factor(losses, stats.norms)
    c = 1.0 if common is None else common.to(own.dtype)
    update = [c * torch.tensordot(own.to(g.dtype), g, dims=1) for g in per_task]
    return strategy.separated_weights(losses, own, common), update


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(("name", "overrides"), SEPARABLE)
def test_separable_weights_are_their_factors_product(name, overrides, n):
    """A ``separable`` weighting's weights are exactly c · h from its factors (what the loop's
    running sum uses, one task at a time), for ordinary, extreme and zero losses and gradients,
    in float32 and float64; and c · Σ_i h_i g_i is the update Σ_i w_i g_i."""
    strategy = make_strategy(name, overrides)
    assert strategy.kind == "gramian" and strategy.loss_weighting is None
    specials = [(), (0.0, 1e-12, 1e8), (1e20, 0.0, 1e-24)]
    for seed, special in enumerate(specials):
        for dtype in (torch.float32, F64):
            for zero_row in (False, True):
                world = make_world(n, seed, special=special, grad_spread=6.0)
                if zero_row:
                    world.raw_grads[0] = 0.0
                for part in parts(strategy):
                    part.setup(world.context())
                step = step_in(world, name, overrides, dtype, stats_dtype=F64)
                a = (world.scales()[:, None] * world.raw_grads).to(dtype)
                weights, update = separated_step(strategy, world.losses().to(dtype),
                                                 world.grads(), [a[:, :2], a[:, 2:]])
                assert torch.equal(weights, step.weights), (weights, step.weights)
                assert_close_update(update, step.update, rtol=1e-5 if dtype != F64 else 1e-12)
