"""Initial-loss normalization, eq. (2): measured and derived references."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mtlbench.data.synthetic import build
from mtlbench.errors import ConfigError
from mtlbench.models.multitask import build_model
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.init_loss import InitLoss
from mtlbench.tasks import TaskSpec
from mtlbench.train import measure_losses

CLS = TaskSpec("cls", "classification", 4, loss_scale=2.0, loss_shift=0.5)
REG = TaskSpec("reg", "regression", 2, loss_scale=3.0, loss_shift=-1.0)
TARGETS = {"cls": torch.tensor([0, 1, 1, 3]),
           "reg": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
# derived, cls: 2 · log 4 + 0.5;  reg: E||y||²/d = (1 + 4 + 9 + 16) / 4 = 7.5 → 3 · 7.5 − 1 = 21.5
DERIVED = [2.0 * math.log(4.0) + 0.5, 21.5]


def autograd_weights(strategy, losses):
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(x), x)
    return grad


def setup(strategy, tasks=(CLS, REG), targets=TARGETS, measure=None):
    strategy.setup(SetupContext(tasks=list(tasks), train_targets=targets, measure_losses=measure))
    return strategy


def test_derived_reference_by_hand():
    strategy = setup(InitLoss(source="derived"))
    assert strategy.reference.dtype == torch.float64
    assert strategy.reference.tolist() == pytest.approx(DERIVED, rel=1e-15)
    losses = torch.tensor([1.0, 43.0], dtype=torch.float64)
    # w_i = 1 / L_i^(init); L = 1 / (2 log 4 + 0.5) + 43 / 21.5
    assert_close(strategy.weights(losses),
                 torch.tensor([1 / DERIVED[0], 1 / 21.5], dtype=torch.float64), rtol=1e-15, atol=0)
    assert strategy.objective(losses).item() == pytest.approx(1 / DERIVED[0] + 2.0, rel=1e-15)


def test_measured_reference_uses_measure_losses_with_batches():
    calls = []

    def measure(k):
        calls.append(k)
        return torch.tensor([2.5, 0.25])

    strategy = setup(InitLoss(source="measured", batches=7), measure=measure)
    assert calls == [7]
    assert strategy.reference.tolist() == [2.5, 0.25]
    # w = (1 / 2.5, 1 / 0.25) = (0.4, 4)
    w = strategy.weights(torch.ones(2, dtype=torch.float64))
    assert w.tolist() == pytest.approx([0.4, 4.0], rel=1e-15)


@pytest.mark.parametrize("source", ["measured", "derived"])
def test_weights_equal_autograd_of_objective(source):
    strategy = setup(InitLoss(source=source), measure=lambda k: torch.tensor([0.7, 12.0]))
    losses = torch.tensor([0.3, 17.0], dtype=torch.float64)
    assert_close(strategy.weights(losses), autograd_weights(strategy, losses), rtol=1e-14, atol=0)


def test_weights_do_not_depend_on_losses_and_follow_dtype():
    strategy = setup(InitLoss(source="derived"))
    a = strategy.weights(torch.tensor([0.0, 1e8], dtype=torch.float64))
    b = strategy.weights(torch.tensor([5.0, 1e-12], dtype=torch.float64))
    assert_close(a, b, rtol=0, atol=0)
    assert strategy.weights(torch.ones(2)).dtype == torch.float32


def test_derived_reference_scales_with_loss_scale():
    # eq. (2) is scale invariant: multiplying a task's loss by λ multiplies its reference by λ
    base = setup(InitLoss(source="derived"), tasks=[TaskSpec("cls", "classification", 4),
                                                    TaskSpec("reg", "regression", 2)])
    scaled = setup(InitLoss(source="derived"),
                   tasks=[TaskSpec("cls", "classification", 4, loss_scale=10.0),
                          TaskSpec("reg", "regression", 2, loss_scale=0.01)])
    assert_close(scaled.reference, base.reference * torch.tensor([10.0, 0.01], dtype=torch.float64),
                 rtol=1e-14, atol=0)


def test_state_dict_round_trip_through_weights_only_checkpoint():
    strategy = setup(InitLoss(source="derived"))
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    restored = InitLoss(source="derived")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    losses = torch.tensor([2.0, 3.0], dtype=torch.float64)
    assert_close(restored.weights(losses), strategy.weights(losses), rtol=0, atol=0)


@pytest.mark.parametrize("source", ["bogus", "Measured", "", None])
def test_unknown_source_is_rejected(source):
    with pytest.raises(ConfigError, match=r"`strategy\.source` must be one of measured, derived\. "
                                          r"Found `strategy\.source = ") as info:
        InitLoss(source=source)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("batches", [0, -3, 2.5, "10", True])
def test_bad_batches_is_rejected(batches):
    with pytest.raises(ConfigError, match=r"`strategy\.batches` must be an integer >= 1\. "
                                          rf"Found `strategy\.batches = {batches}`"):
        InitLoss(batches=batches)


@pytest.mark.parametrize("source", ["measured", "derived"])
def test_non_positive_reference_is_a_clear_error(source):
    # log 4 − log 4 = 0 exactly: the reference would be 0, and eq. (2) divides by it.
    task = TaskSpec("cls", "classification", 4, loss_shift=-math.log(4.0))
    reg = TaskSpec("reg", "regression", 2)
    with pytest.raises(ConfigError, match=rf"The {source} initial loss of task `cls` is 0, but it "
                                          r"must be > 0.*data\.tasks\.cls\.loss_shift") as info:
        setup(InitLoss(source=source), tasks=[task, reg],
              measure=lambda k: torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert "\n" not in str(info.value)


def test_non_finite_measured_reference_is_a_clear_error():
    with pytest.raises(ConfigError, match="initial loss of task `reg` is nan"):
        setup(InitLoss(source="measured"), measure=lambda k: torch.tensor([1.0, math.nan]))


# ------------------------------------------------------------------ derived == measured (claim 4)
N_TRAIN, BATCH = 96, 16
TASK_CFG = {
    "k3": {"kind": "classification", "num_classes": 3, "class_skew": 1.0},
    "k7": {"kind": "classification", "num_classes": 7, "loss_scale": 0.3, "loss_shift": 0.2},
    "r1": {"kind": "regression", "dim": 1, "loss_shift": 5.0},
    "r3": {"kind": "regression", "dim": 3, "target_scale": 100.0, "loss_scale": 1e-3},
}


def zero_head_model(data):
    model = build_model({"_target_": "mtlbench.models.mlp.MLPBackbone", "width": 8, "depth": 2,
                         "head_hidden": 4}, data.input_shape, data.tasks)
    for head in model.heads.values():
        last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return model


@pytest.fixture(scope="module")
def tiny_data():
    return build(seed=3, tasks=TASK_CFG, n_train=N_TRAIN, n_val=8, n_test=8, input_dim=5,
                 teacher_dim=4)


def test_derived_equals_measured_when_heads_output_zero(tiny_data):
    model = zero_head_model(tiny_data)
    x = tiny_data.train.inputs[:5]
    assert all(bool((out == 0).all()) for out in model(x)[1].values())
    # N_TRAIN / BATCH = 6 batches: one epoch, every training row exactly once
    measured = measure_losses(model, tiny_data, N_TRAIN // BATCH, BATCH, seed=0)
    derived = [t.derived_init_loss(tiny_data.train.targets[t.name]) for t in tiny_data.tasks]
    assert measured.tolist() == pytest.approx(derived, rel=1e-6)
    # and the strategy's two sources agree
    ctx = SetupContext(tasks=tiny_data.tasks, train_targets=tiny_data.train.targets,
                       measure_losses=lambda k: measure_losses(model, tiny_data, k, BATCH, seed=0))
    a, b = InitLoss(source="measured", batches=N_TRAIN // BATCH), InitLoss(source="derived")
    a.setup(ctx)
    b.setup(ctx)
    assert_close(a.reference, b.reference, rtol=1e-6, atol=0)
    # sanity of the hand formulas on this data: log K, and E||y||²/d after the transform
    assert derived[0] == pytest.approx(math.log(3), rel=1e-15)
    assert derived[1] == pytest.approx(0.3 * math.log(7) + 0.2, rel=1e-15)
    y3 = tiny_data.train.targets["r3"].double()
    assert derived[3] == pytest.approx(1e-3 * float((y3**2).sum()) / y3.numel(), rel=1e-12)


def test_measured_with_shift_making_reference_negative_is_a_clear_error():
    tasks = dict(TASK_CFG)
    tasks["k3"] = {**tasks["k3"], "loss_shift": -math.log(3) - 0.5}
    data = build(seed=3, tasks=tasks, n_train=N_TRAIN, n_val=8, n_test=8, input_dim=5,
                 teacher_dim=4)
    model = zero_head_model(data)
    ctx = SetupContext(tasks=data.tasks, train_targets=data.train.targets,
                       measure_losses=lambda k: measure_losses(model, data, k, BATCH, seed=0))
    for strategy in (InitLoss(source="measured", batches=2), InitLoss(source="derived")):
        with pytest.raises(ConfigError, match=r"initial loss of task `k3` is -0\.5\d*, but it "
                                              r"must be > 0.*data\.tasks\.k3\.loss_shift"):
            strategy.setup(ctx)


def test_invariance_claims():
    assert InitLoss.scale_invariant is True
    assert InitLoss.shift_invariant is False
