"""Equal weighting, eq. (1) with α_i = 1/n."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.equal import Equal
from mtlbench.tasks import TaskSpec


def autograd_weights(strategy, losses):
    """∂ objective / ∂ L_i by autograd."""
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(x), x)
    return grad


def test_weights_and_objective_by_hand():
    losses = torch.tensor([1.0, 4.0, 10.0], dtype=torch.float64)
    strategy = Equal()
    # w_i = 1/3; L = (1 + 4 + 10) / 3 = 5
    assert_close(strategy.weights(losses), torch.full((3,), 1 / 3, dtype=torch.float64),
                 rtol=0, atol=1e-15)
    assert strategy.objective(losses).item() == pytest.approx(5.0, rel=1e-15)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_weights_sum_to_one_and_keep_dtype(n):
    losses = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 10
    w = Equal().weights(losses)
    assert w.shape == (n,) and w.dtype == torch.float64
    assert w.sum().item() == pytest.approx(1.0, rel=1e-15)
    assert Equal().weights(losses.float()).dtype == torch.float32


@pytest.mark.parametrize("seed", range(4))
def test_weights_equal_autograd_of_objective(seed):
    gen = torch.Generator().manual_seed(seed)
    losses = torch.rand(4, dtype=torch.float64, generator=gen) * 10 ** (seed - 1)
    strategy = Equal()
    assert_close(strategy.weights(losses), autograd_weights(strategy, losses), rtol=1e-14, atol=0)


def test_weights_do_not_depend_on_losses():
    strategy = Equal()
    a = strategy.weights(torch.tensor([0.0, 1e-12, 1e8], dtype=torch.float64))
    b = strategy.weights(torch.tensor([5.0, 5.0, 5.0], dtype=torch.float64))
    assert_close(a, b, rtol=0, atol=0)


def test_setup_and_state_dict_are_trivial():
    strategy = Equal()
    strategy.setup(SetupContext(tasks=[TaskSpec("a", "regression", 1)]))
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})
    assert_close(strategy.weights(torch.ones(2, dtype=torch.float64)),
                 torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_invariance_claims():
    assert Equal.scale_invariant is False
    assert Equal.shift_invariant is True
