"""Every strategy over several steps, as the loop drives it: weights stay valid while its state
(learned weights, moving averages, epoch ratios, logits) evolves, and a state_dict taken mid-run
and loaded into a fresh instance continues with exactly the same weights (what resume relies on).

Each step: seeded losses and gradients drift (losses shrink at task-specific rates), the strategy
weighs them (``combine_gradients`` for combiners), ``after_step`` reports them, an epoch ends every
3 steps, and learned strategy parameters take one Adam step on the objective.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_properties import NAMES, World, make_strategy, make_world

from mtlbench.stats import GradientStats
from mtlbench.strategies.base import Strategy

STEPS, SPLIT = 8, 4


def drive(strategy: Strategy, world: World, steps: range) -> list[torch.Tensor]:
    """Weights of each step in ``steps`` (the loop's calls, in the loop's order)."""
    params = strategy.parameters()
    opt = torch.optim.Adam(params, lr=0.05) if params else None
    if opt is not None and getattr(strategy, "_test_opt_state", None):
        opt.load_state_dict(strategy._test_opt_state)
    out = []
    for t in steps:
        decay = torch.linspace(0.7, 0.97, world.n, dtype=torch.float64) ** t
        losses = world.losses() * decay
        a = world.scales()[:, None] * world.raw_grads * decay[:, None].sqrt()
        if strategy.combines_gradients:
            w, _ = strategy.combine_gradients(losses, [a[:, :2].clone(), a[:, 2:].clone()])
        else:
            gram = a @ a.T
            stats = GradientStats(gram.diagonal().sqrt(), gram)
            w = strategy.weights(losses, stats if strategy.needs_gradients else None)
        if opt is not None:
            opt.zero_grad()
            strategy.objective(losses.float() if params[0].dtype == torch.float32 else losses
                               ).backward()
            opt.step()
            strategy._test_opt_state = opt.state_dict()
        strategy.after_step(losses)
        if (t + 1) % 3 == 0:
            strategy.end_of_epoch(t // 3)
        out.append(w.detach().clone())
    return out


@pytest.mark.parametrize("name", NAMES)
def test_weights_stay_valid_and_state_resumes_exactly(name: str) -> None:
    world = make_world(3, seed=11, lo=-3.0, hi=3.0)
    strategy = make_strategy(name, {})
    try:
        strategy.setup(world.context())
    except Exception as error:  # noqa: BLE001 - e.g. single_task refuses three tasks
        pytest.skip(f"{name} refuses this task set: {error}")
    torch.manual_seed(3)
    first = drive(strategy, world, range(SPLIT))
    state = copy.deepcopy(strategy.state_dict())
    opt_state = copy.deepcopy(getattr(strategy, "_test_opt_state", None))
    rng = torch.get_rng_state()
    rest = drive(strategy, world, range(SPLIT, STEPS))

    resumed = make_strategy(name, {})
    resumed.setup(world.context())
    resumed.load_state_dict(copy.deepcopy(state))
    resumed._test_opt_state = opt_state
    torch.set_rng_state(rng)
    again = drive(resumed, world, range(SPLIT, STEPS))

    for w in first + rest:
        assert w.shape == (3,) and torch.isfinite(w).all(), (name, w)
        assert (w >= 0).all() or not strategy.nonnegative_weights, (name, w)
    for a, b in zip(rest, again, strict=True):
        assert torch.equal(a, b), (name, a, b)
