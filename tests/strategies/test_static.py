"""User-given static weights, eq. (1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.static import Static
from mtlbench.tasks import TaskSpec

TASKS = [TaskSpec("a", "classification", 3), TaskSpec("b", "regression", 2),
         TaskSpec("c", "regression", 1)]


def autograd_weights(strategy, losses):
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(x), x)
    return grad


def make(weights, tasks=TASKS):
    strategy = Static(weights=weights)
    strategy.setup(SetupContext(tasks=list(tasks)))
    return strategy


def test_weights_and_objective_by_hand():
    strategy = make({"a": 2.0, "c": 0.5})
    losses = torch.tensor([3.0, 4.0, 8.0], dtype=torch.float64)
    # unnamed task b weighs 1: α = (2, 1, 0.5); L = 2·3 + 1·4 + 0.5·8 = 14
    assert_close(strategy.weights(losses), torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64),
                 rtol=0, atol=0)
    assert strategy.objective(losses).item() == pytest.approx(14.0, rel=1e-15)


def test_default_is_all_ones():
    strategy = make(None)
    losses = torch.tensor([3.0, 4.0, 8.0], dtype=torch.float64)
    assert_close(strategy.weights(losses), torch.ones(3, dtype=torch.float64), rtol=0, atol=0)
    assert strategy.objective(losses).item() == pytest.approx(15.0, rel=1e-15)


def test_weights_follow_task_names_not_positions():
    strategy = make({"a": 2.0, "c": 0.5}, tasks=[TASKS[2], TASKS[0], TASKS[1]])
    assert_close(strategy.weights(torch.ones(3, dtype=torch.float64)),
                 torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64), rtol=0, atol=0)


def test_zero_weight_allowed_if_another_is_positive():
    strategy = make({"a": 0.0, "b": 0.0})
    assert strategy.weights(torch.ones(3, dtype=torch.float64)).tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("seed", range(3))
def test_weights_equal_autograd_of_objective(seed):
    strategy = make({"a": 0.3, "b": 7.0})
    losses = torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert_close(strategy.weights(losses), autograd_weights(strategy, losses), rtol=1e-14, atol=0)


def test_weights_dtype_and_device_follow_losses():
    strategy = make({"a": 0.3})
    assert strategy.weights(torch.ones(3)).dtype == torch.float32


@pytest.mark.parametrize("value", [-1.0, -1e-9])
def test_negative_weight_is_rejected(value):
    with pytest.raises(ConfigError, match=r"strategy\.weights\.b.*>= 0.*Found") as info:
        Static(weights={"a": 1.0, "b": value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "heavy", True])
def test_non_real_weight_is_rejected(value):
    with pytest.raises(ConfigError, match=r"`strategy\.weights\.a` must be a finite real number"):
        Static(weights={"a": value})


def test_all_zero_is_rejected_at_setup():
    strategy = Static(weights={"a": 0.0, "b": 0.0, "c": 0.0})
    with pytest.raises(ConfigError, match="at least one task a weight > 0") as info:
        strategy.setup(SetupContext(tasks=TASKS))
    assert "\n" not in str(info.value)


def test_unknown_task_is_rejected_at_setup():
    strategy = Static(weights={"a": 1.0, "nope": 2.0})
    with pytest.raises(ConfigError, match=r"`strategy\.weights\.nope` names no task; the tasks are "
                                          r"a, b, c"):
        strategy.setup(SetupContext(tasks=TASKS))


def test_integer_weights_accepted():
    strategy = make({"a": 3})
    assert strategy.weights(torch.ones(3, dtype=torch.float64)).tolist() == [3.0, 1.0, 1.0]


def test_invariance_claims():
    assert Static.scale_invariant is False
    assert Static.shift_invariant is True
