"""Prior-loss normalization, eq. (3): label entropy and label variance."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.init_loss import InitLoss
from mtlbench.strategies.prior_loss import PriorLoss
from mtlbench.tasks import TaskSpec

CLS = TaskSpec("cls", "classification", 3)
REG = TaskSpec("reg", "regression", 2)
TARGETS = {"cls": torch.tensor([0, 0, 0, 1]),  # p = (3/4, 1/4, 0)
           "reg": torch.tensor([[1.0, 2.0], [3.0, 6.0]])}  # μ = (2, 4)
# H = −(3/4 log 3/4 + 1/4 log 1/4) (the empty class contributes 0)
ENTROPY = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
# E||y − μ||²/d = ((−1)² + (−2)² + 1² + 2²) / 4 = 2.5
VARIANCE = 2.5


def autograd_weights(strategy, losses):
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(x), x)
    return grad


def make(tasks=(CLS, REG), targets=TARGETS):
    strategy = PriorLoss()
    strategy.setup(SetupContext(tasks=list(tasks), train_targets=targets))
    return strategy


def test_reference_by_hand():
    strategy = make()
    assert pytest.approx(0.5623351446188083, rel=1e-15) == ENTROPY
    assert strategy.reference.tolist() == pytest.approx([ENTROPY, VARIANCE], rel=1e-15)
    losses = torch.tensor([2.0, 5.0], dtype=torch.float64)
    # w = (1/H, 1/2.5); L = 2/H + 5/2.5
    assert_close(strategy.weights(losses),
                 torch.tensor([1 / ENTROPY, 0.4], dtype=torch.float64), rtol=1e-15, atol=0)
    assert strategy.objective(losses).item() == pytest.approx(2 / ENTROPY + 2.0, rel=1e-15)


def test_reference_after_transform():
    tasks = [TaskSpec("cls", "classification", 3, loss_scale=2.0, loss_shift=0.1),
             TaskSpec("reg", "regression", 2, loss_scale=0.5, loss_shift=3.0)]
    # 2 H + 0.1 and 0.5 · 2.5 + 3 = 4.25
    assert make(tasks).reference.tolist() == pytest.approx([2 * ENTROPY + 0.1, 4.25], rel=1e-15)


def test_uniform_labels_give_log_k_equal_to_init():
    targets = {"cls": torch.tensor([0, 1, 2, 2, 1, 0]),
               "reg": torch.tensor([[1.0, -1.0], [-1.0, 1.0]])}  # zero-mean targets
    prior = make(targets=targets).reference
    init = InitLoss(source="derived")
    init.setup(SetupContext(tasks=[CLS, REG], train_targets=targets))
    assert prior[0].item() == pytest.approx(math.log(3), rel=1e-15)
    assert_close(prior, init.reference, rtol=1e-15, atol=0)


def test_non_uniform_labels_give_prior_below_init():
    prior = make().reference
    init = InitLoss(source="derived")
    init.setup(SetupContext(tasks=[CLS, REG], train_targets=TARGETS))
    # H < log 3 for skewed classes; variance 2.5 < E||y||²/d = (1 + 4 + 9 + 36)/4 = 12.5
    assert init.reference.tolist() == pytest.approx([math.log(3), 12.5], rel=1e-15)
    assert prior[0] < init.reference[0] - 0.5
    assert prior[1] < init.reference[1] - 5


def test_ignores_class_count_beyond_observed():
    # the same labels declared as 5 classes: unobserved classes add 0 to the entropy
    tasks = [TaskSpec("cls", "classification", 5), REG]
    assert make(tasks).reference[0].item() == pytest.approx(ENTROPY, rel=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_weights_equal_autograd_of_objective(seed):
    strategy = make()
    losses = torch.rand(2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert_close(strategy.weights(losses), autograd_weights(strategy, losses), rtol=1e-14, atol=0)


def test_single_class_labels_are_a_clear_error():
    with pytest.raises(ConfigError, match=r"The prior loss of task `cls` is 0, but it must be > 0 "
                                          r".*data\.tasks\.cls\.loss_shift") as info:
        make(targets={"cls": torch.tensor([1, 1, 1]), "reg": TARGETS["reg"]})
    assert "\n" not in str(info.value)


def test_negative_shift_is_a_clear_error():
    tasks = [CLS, TaskSpec("reg", "regression", 2, loss_shift=-3.0)]
    with pytest.raises(ConfigError, match=r"prior loss of task `reg` is -0\.5, but it must be > 0"):
        make(tasks)


def test_state_dict_round_trip_through_weights_only_checkpoint():
    strategy = make()
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    restored = PriorLoss()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    losses = torch.tensor([2.0, 3.0], dtype=torch.float64)
    assert_close(restored.weights(losses), strategy.weights(losses), rtol=0, atol=0)


def test_invariance_claims():
    assert PriorLoss.scale_invariant is True
    assert PriorLoss.shift_invariant is False
