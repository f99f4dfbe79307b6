"""Every strategy over several steps, as the loop drives it: weights stay valid while its state
(learned weights, moving averages, epoch ratios, logits) evolves, and a state_dict taken mid-run
and loaded into a fresh instance continues with exactly the same weights (what resume relies on).

Each step: seeded losses and gradients drift (losses shrink at task-specific rates), the strategy
weighs them (by kind: ``weights``, ``decide``, or ``combine`` for combiners), ``after_step``
reports them, an epoch ends every 3 steps, and learned strategy parameters take one Adam step on
the objective.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_properties import NAMES, World, make_strategy, make_world

from mtlbench.stats import GradientStats, PerTaskGradients
from mtlbench.strategies.base import Strategy, parts

STEPS, SPLIT = 8, 4


def drive(strategy: Strategy, world: World, steps: range) -> list[torch.Tensor]:
    """Weights of each step in ``steps`` (the loop's calls, in the loop's order; a stacked loss
    weighting is trained, told of steps and epochs, and checkpointed like the strategy)."""
    learned = [part for part in parts(strategy) if part.parameters()]
    params = [q for part in learned for q in part.parameters()]
    opt = torch.optim.Adam(params, lr=0.05) if params else None
    if opt is not None and getattr(strategy, "_test_opt_state", None):
        opt.load_state_dict(strategy._test_opt_state)
    out = []
    for t in steps:
        decay = torch.linspace(0.7, 0.97, world.n, dtype=torch.float64) ** t
        losses = world.losses() * decay
        a = world.scales()[:, None] * world.raw_grads * decay[:, None].sqrt()
        gram = a @ a.T
        stats = GradientStats(gram.diagonal().sqrt(), gram)
        if strategy.kind == "combiner":
            w = strategy.combine(losses, PerTaskGradients([a[:, :2].clone(), a[:, 2:].clone()],
                                                          stats)).weights
        elif strategy.kind == "gramian":
            w = strategy.decide(losses, stats)[0]
        else:
            w = strategy.weights(losses, None)
        if opt is not None:
            opt.zero_grad()
            for part in learned:
                part.objective(losses.float() if params[0].dtype == torch.float32 else losses
                               ).backward()
            opt.step()
            strategy._test_opt_state = opt.state_dict()
        for part in parts(strategy):
            part.after_step(losses)
            if (t + 1) % 3 == 0:
                part.end_of_epoch(t // 3)
        out.append(w.detach().clone())
    return out


def setup(strategy: Strategy, world: World) -> None:
    for part in parts(strategy):
        part.setup(world.context())


def ready(name: str, world: World) -> Strategy:
    """``strategy=<name>`` with its defaults, set up on ``world`` (the test is skipped if the
    strategy refuses the task set)."""
    strategy = make_strategy(name, {})
    try:
        setup(strategy, world)
    except Exception as error:  # noqa: BLE001 - e.g. single_task refuses three tasks
        pytest.skip(f"{name} refuses this task set: {error}")
    return strategy


@pytest.mark.parametrize("name", NAMES)
def test_weights_stay_valid_and_state_resumes_exactly(name: str) -> None:
    world = make_world(3, seed=11, lo=-3.0, hi=3.0)
    strategy = ready(name, world)
    torch.manual_seed(3)
    first = drive(strategy, world, range(SPLIT))
    state = copy.deepcopy([part.state_dict() for part in parts(strategy)])
    opt_state = copy.deepcopy(getattr(strategy, "_test_opt_state", None))
    rng = torch.get_rng_state()
    rest = drive(strategy, world, range(SPLIT, STEPS))

    resumed = make_strategy(name, {})
    setup(resumed, world)
    for part, part_state in zip(parts(resumed), copy.deepcopy(state), strict=True):
        part.load_state_dict(part_state)
    resumed._test_opt_state = opt_state
    torch.set_rng_state(rng)
    again = drive(resumed, world, range(SPLIT, STEPS))

    for w in first + rest:
        assert w.shape == (3,) and torch.isfinite(w).all(), (name, w)
        assert (w >= 0).all() or not strategy.nonnegative_weights, (name, w)
    for a, b in zip(rest, again, strict=True):
        assert torch.equal(a, b), (name, a, b)


def weigh_skipped(strategy: Strategy, world: World, t: int, nan: bool) -> None:
    """One step the loop weighs and then does not apply: a NaN loss and gradient (``nan``), or
    finite ones whose step was not taken (``16-mixed``: another gradient overflowed)."""
    losses = world.losses() * 0.5 ** t
    a = world.scales()[:, None] * world.raw_grads * 1.5
    if nan:
        losses, a = losses.clone(), a.clone()
        losses[1], a[1, 0] = float("nan"), float("nan")
    gram = a @ a.T
    stats = GradientStats(gram.diagonal().sqrt(), gram)
    if strategy.kind == "combiner":
        strategy.combine(losses, PerTaskGradients([a[:, :2].clone(), a[:, 2:].clone()], stats))
    elif strategy.kind == "gramian":
        strategy.decide(losses, stats)
    else:
        strategy.weights(losses, None)


@pytest.mark.parametrize("at", [0, SPLIT], ids=["first", "later"])
@pytest.mark.parametrize("nan", [True, False], ids=["nan", "finite"])
@pytest.mark.parametrize("name", NAMES)
def test_a_skipped_step_leaves_no_trace(name: str, nan: bool, at: int) -> None:
    """The loop copies the strategy's state before a step that may be skipped
    (``on_nonfinite=skip_step``, ``16-mixed``) and puts it back when the step is not applied:
    the run then continues exactly as if the step had never been weighed, the first step
    included. (GradNorm's weights and DB-MTL's moving average once kept the NaN of one skipped
    step for good; Nash-MTL's solver kept a skipped first solve as its warm start.)"""
    from mtlbench.train import restore_strategy, strategy_state

    world = make_world(3, seed=11, lo=-3.0, hi=3.0)
    runs = []
    for skip in (False, True):
        strategy = ready(name, world)
        torch.manual_seed(3)
        drive(strategy, world, range(at))
        if skip:
            before, rng = strategy_state(strategy), torch.get_rng_state()
            weigh_skipped(strategy, world, at, nan)
            restore_strategy(strategy, before)
            torch.set_rng_state(rng)  # (the loop's draws go on; here they are compared)
        runs.append(drive(strategy, world, range(at, STEPS)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b), (name, a, b)
