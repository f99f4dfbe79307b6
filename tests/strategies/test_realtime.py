"""Real-time loss normalization, eq. (4)-(6)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mtlbench.strategies.base import LOSS_FLOOR, SetupContext
from mtlbench.strategies.realtime import Realtime
from mtlbench.tasks import TaskSpec


def autograd_weights(strategy, losses):
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(x), x)
    return grad


def test_weights_and_objective_by_hand():
    strategy = Realtime()
    losses = torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64)
    # w_i = 1 / L_i = (0.5, 2, 0.25); every term L_i / sg(L_i) is 1, so L = n = 3
    assert_close(strategy.weights(losses), torch.tensor([0.5, 2.0, 0.25], dtype=torch.float64),
                 rtol=0, atol=0)
    assert strategy.objective(losses).item() == 3.0


@pytest.mark.parametrize("seed", range(4))
def test_weights_equal_autograd_of_objective(seed):
    gen = torch.Generator().manual_seed(seed)
    losses = 10.0 ** (torch.rand(5, dtype=torch.float64, generator=gen) * 12 - 6)
    strategy = Realtime()
    assert_close(strategy.weights(losses), autograd_weights(strategy, losses), rtol=1e-14, atol=0)


def test_only_zero_losses_are_floored():
    """Positive normal losses keep w = 1/L at any magnitude (1e-12 … 1e-300 included: the old
    floor made them all 1e12); a zero, negative or subnormal loss counts as LOSS_FLOOR."""
    w = Realtime().weights(torch.tensor([0.0, 1e-12, 1e-30, 1e-300, 1e8, -2.0, 5e-324],
                                        dtype=torch.float64))
    assert torch.isfinite(w).all()
    assert w.tolist() == pytest.approx([1 / LOSS_FLOOR, 1e12, 1e30, 1e300, 1e-8, 1 / LOSS_FLOOR,
                                        1 / LOSS_FLOOR], rel=1e-15)
    w32 = Realtime().weights(torch.tensor([0.0, 1e8, 1e-24, 1e-40]))  # 1e-40: float32 subnormal
    assert w32.dtype == torch.float32
    assert w32.tolist() == pytest.approx([2 ** 23, 1e-8, 1e24, 2 ** 23], rel=1e-6)


def test_a_cross_entropy_that_rounds_to_zero_gets_an_order_one_update() -> None:
    """A float32 cross-entropy is exactly 0 once every margin passes ~16.6, while its gradient
    is not (~e^-margin): w = 1/LOSS_FLOOR = 2²³ keeps ∇L/L of order 1 across that point, as it is
    for the largest margins still resolved (the old floor 1e-12 made it ~1e4 times larger)."""
    assert LOSS_FLOOR == 2.0 ** -23
    grads = []
    for margin in (16.0, 17.0):
        logits = torch.tensor([[margin, 0.0]], requires_grad=True)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
        (loss * Realtime().weights(loss.detach().reshape(1))[0]).backward()
        grads.append(float(logits.grad.abs().max()))
        assert (float(loss.detach()) == 0.0) == (margin == 17.0)
    assert 0.1 < grads[0] < 2.0 and 0.1 < grads[1] < 2.0, grads


@pytest.mark.parametrize("lam", [1e-12, 1e-6, 1e6, 1e12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scale_invariant_far_below_the_old_floor(lam, dtype):
    """Losses 1e-24 … 1e20 (1e-12 … 1e8 scaled by 1e-12 … 1e12): w_k · λ is unchanged."""
    base = torch.tensor([1e-12, 3e-5, 1.0, 1e8], dtype=torch.float64)
    for k in range(4):
        scaled = base.clone()
        scaled[k] *= lam
        got = Realtime().weights(scaled.to(dtype)).double()
        got[k] *= lam
        assert_close(got, Realtime().weights(base.to(dtype)).double(),
                     rtol=1e-6 if dtype == torch.float32 else 1e-15, atol=0)


def test_objective_does_not_divide_by_zero():
    x = torch.tensor([0.0, 3.0], dtype=torch.float64, requires_grad=True)
    value = Realtime().objective(x)
    (grad,) = torch.autograd.grad(value, x)
    assert value.item() == pytest.approx(1.0)  # 0 / LOSS_FLOOR + 3 / 3
    assert grad.tolist() == pytest.approx([1 / LOSS_FLOOR, 1 / 3], rel=1e-15)


def test_shift_changes_weights():
    strategy = Realtime()
    a = strategy.weights(torch.tensor([1.0, 2.0], dtype=torch.float64))
    b = strategy.weights(torch.tensor([1.0, 2.0 + 3.0], dtype=torch.float64))
    # direction changes: w2/w1 goes from 1/2 to 1/5
    assert (a[1] / a[0]).item() == pytest.approx(0.5)
    assert (b[1] / b[0]).item() == pytest.approx(0.2)


def test_model_gradient_is_sum_of_normalized_task_gradients():
    """eq. (5): ∇_θ Σ L_i / sg(L_i) = Σ ∇_θ L_i / L_i, and eq. (6): = ∇_θ Σ log L_i."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    shared = torch.nn.Linear(4, 3).double()
    heads = [torch.nn.Linear(3, 1).double(), torch.nn.Linear(3, 2).double()]
    params = [*shared.parameters(), *(p for h in heads for p in h.parameters())]
    x = torch.randn(8, 4, dtype=torch.float64, generator=gen)
    y = [torch.randn(8, 1, dtype=torch.float64, generator=gen) * 100,
         torch.randn(8, 2, dtype=torch.float64, generator=gen)]

    def losses():
        z = torch.tanh(shared(x))
        return torch.stack([((h(z) - t) ** 2).mean() for h, t in zip(heads, y, strict=True)])

    strategy = Realtime()
    got = torch.autograd.grad(strategy.objective(losses()), params)
    values = losses()
    per_task = [torch.autograd.grad(values[i], params, retain_graph=True, allow_unused=True)
                for i in range(2)]
    for j, p in enumerate(params):
        expected = sum(torch.zeros_like(p) if g[j] is None else g[j] / values[i].detach()
                       for i, g in enumerate(per_task))
        assert_close(got[j], expected, rtol=1e-12, atol=1e-15)
    logs = torch.autograd.grad(losses().log().sum(), params)
    for a, b in zip(got, logs, strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-15)
    # the loop applies Σ sg(w_i) L_i: the same gradient
    loop = torch.autograd.grad((strategy.weights(values.detach()) * losses()).sum(), params)
    for a, b in zip(got, loop, strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_setup_and_state_dict_are_trivial():
    strategy = Realtime()
    strategy.setup(SetupContext(tasks=[TaskSpec("a", "regression", 1)]))
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})


def test_invariance_claims():
    assert Realtime.scale_invariant is True
    assert Realtime.shift_invariant is False
