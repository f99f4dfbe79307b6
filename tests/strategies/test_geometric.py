"""Geometric mean of the losses, eq. (7)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.geometric import Geometric
from mtlbench.strategies.realtime import Realtime
from mtlbench.tasks import TaskSpec


def autograd_weights(strategy, losses):
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(x), x)
    return grad


def test_weights_and_objective_by_hand():
    strategy = Geometric()
    losses = torch.tensor([2.0, 8.0, 4.0], dtype=torch.float64)
    # L = (2 · 8 · 4)^(1/3) = 64^(1/3) = 4; w_i = L / (n L_i) = (4/6, 4/24, 4/12)
    assert strategy.objective(losses).item() == pytest.approx(4.0, rel=1e-15)
    assert_close(strategy.weights(losses),
                 torch.tensor([2 / 3, 1 / 6, 1 / 3], dtype=torch.float64), rtol=1e-15, atol=0)
    # two tasks: L = sqrt(1 · 4) = 2, w = (2/2, 2/8)
    assert strategy.weights(torch.tensor([1.0, 4.0], dtype=torch.float64)).tolist() == \
        pytest.approx([1.0, 0.25], rel=1e-15)


def test_single_task_weight_is_one():
    assert Geometric().weights(torch.tensor([123.0], dtype=torch.float64)).item() == \
        pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_weights_equal_autograd_of_objective(seed):
    gen = torch.Generator().manual_seed(seed)
    losses = 10.0 ** (torch.rand(5, dtype=torch.float64, generator=gen) * 12 - 6)
    strategy = Geometric()
    assert_close(strategy.weights(losses), autograd_weights(strategy, losses), rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_same_direction_as_realtime(seed):
    """eq. (6): the geometric mean's weights are realtime's 1/L_i times the common factor L/n."""
    gen = torch.Generator().manual_seed(seed)
    losses = 10.0 ** (torch.rand(4, dtype=torch.float64, generator=gen) * 8 - 4)
    geo, rt = Geometric(), Realtime()
    factor = geo.objective(losses) / 4
    assert_close(geo.weights(losses), factor * rt.weights(losses), rtol=1e-12, atol=0)


def test_extreme_losses_give_finite_weights():
    for dtype in (torch.float32, torch.float64):
        losses = torch.tensor([0.0, 1e-12, 1e8, 1.0], dtype=dtype)
        w = Geometric().weights(losses)
        assert w.dtype == dtype
        assert torch.isfinite(w).all() and (w > 0).all()
        assert torch.isfinite(Geometric().objective(losses))


def test_setup_and_state_dict_are_trivial():
    strategy = Geometric()
    strategy.setup(SetupContext(tasks=[TaskSpec("a", "regression", 1)]))
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})


def test_invariance_claims():
    assert Geometric.scale_invariant is True
    assert Geometric.shift_invariant is False


def test_weights_are_the_gradient_of_torchjds_geometric_mean() -> None:
    """torchjd's ``GeometricMean`` scalarizer (GLS) is (Π L_i)^(1/n): its gradient is our
    weights' direction (ours are ∂/∂L_i of that mean, up to the positive factor of eq. 7)."""
    from torchjd.scalarization import GeometricMean

    from mtlbench.strategies.geometric import Geometric

    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        losses = (torch.rand(4, generator=gen, dtype=torch.float64) * 5 + 0.01).requires_grad_()
        (grad,) = torch.autograd.grad(GeometricMean()(losses), losses)
        w = Geometric().weights(losses.detach())
        ratio = w / grad
        assert torch.allclose(ratio, ratio[0].expand(4), rtol=1e-12, atol=0), ratio
