"""TaskSpec: loss transform, losses, metrics, eq. (2) derived initial loss, eq. (3) prior loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.tasks import TaskSpec

F64 = torch.float64
LN3 = math.log(3.0)


def test_transform_numbers_and_tensors():
    task = TaskSpec("a", "regression", 1, loss_scale=2.0, loss_shift=-0.5)
    assert task.transform(3.0) == 5.5  # 2 · 3 − 0.5
    assert_close(task.transform(torch.tensor([0.0, 1.0], dtype=F64)),
                 torch.tensor([-0.5, 1.5], dtype=F64), rtol=0, atol=0)


def test_classification_loss_by_hand():
    task = TaskSpec("c", "classification", 2, loss_scale=2.0, loss_shift=0.1)
    logits = torch.tensor([[0.0, LN3], [LN3, 0.0]], dtype=F64)
    target = torch.tensor([1, 1])
    # softmax of (0, ln 3) is (1/4, 3/4): −ln(3/4) for row 1, −ln(1/4) for row 2; batch mean
    raw = (math.log(4 / 3) + math.log(4)) / 2
    assert task.raw_loss(logits, target).item() == pytest.approx(raw, rel=1e-14)
    assert task.loss(logits, target).item() == pytest.approx(2 * raw + 0.1, rel=1e-14)


def test_regression_loss_averages_over_batch_and_dimensions():
    task = TaskSpec("r", "regression", 2, loss_scale=0.5, loss_shift=1.0)
    output = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    target = torch.tensor([[0.0, 0.0], [3.0, 6.0]], dtype=F64)
    # squared errors 1, 4, 0, 4 → mean 9/4 (not the per-sample sum 9/2)
    assert task.raw_loss(output, target).item() == 2.25
    assert task.loss(output, target).item() == pytest.approx(0.5 * 2.25 + 1.0, rel=1e-15)


def test_loss_gradient_is_scaled_and_not_shifted():
    base = TaskSpec("r", "regression", 1)
    moved = TaskSpec("r", "regression", 1, loss_scale=3.0, loss_shift=100.0)
    target = torch.tensor([[1.0], [2.0]], dtype=F64)
    grads = []
    for task in (base, moved):
        out = torch.zeros(2, 1, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(task.loss(out, target), out)
        grads.append(g)
    assert_close(grads[1], 3.0 * grads[0], rtol=1e-15, atol=0)


def test_metrics():
    cls = TaskSpec("c", "classification", 2, loss_scale=5.0, loss_shift=1.0)
    reg = TaskSpec("r", "regression", 1, loss_scale=5.0, loss_shift=1.0)
    assert (cls.metric, reg.metric) == ("accuracy", "mse")
    assert cls.is_classification and not reg.is_classification
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.1]])
    assert cls.metric_value(logits, torch.tensor([0, 0, 0])).item() == pytest.approx(2 / 3)
    # the metric is the raw mse, untouched by the loss transform: (1 + 9) / 2
    out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
    assert reg.metric_value(out, y).item() == 5.0


@pytest.mark.parametrize("k", [2, 3, 10])
def test_derived_init_loss_classification_is_log_k(k):
    assert TaskSpec("c", "classification", k).derived_init_loss(torch.tensor([0, 1])) == \
        pytest.approx(math.log(k), rel=1e-15)
    task = TaskSpec("c", "classification", k, loss_scale=0.5, loss_shift=2.0)
    assert task.derived_init_loss(torch.tensor([0])) == pytest.approx(0.5 * math.log(k) + 2.0,
                                                                     rel=1e-15)


def test_derived_init_loss_regression_by_hand():
    y = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # E||y||² / d = (1 + 4 + 9 + 16) / (2 · 2) = 7.5
    assert TaskSpec("r", "regression", 2).derived_init_loss(y) == 7.5
    assert TaskSpec("r", "regression", 2, loss_scale=4.0, loss_shift=-1.0).derived_init_loss(y) \
        == 29.0


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_derived_init_loss_is_the_loss_of_zero_outputs(kind):
    gen = torch.Generator().manual_seed(0)
    if kind == "classification":
        task = TaskSpec("t", kind, 5, loss_scale=1.7, loss_shift=0.3)
        y = torch.randint(0, 5, (64,), generator=gen)
    else:
        task = TaskSpec("t", kind, 3, loss_scale=1.7, loss_shift=0.3)
        y = 2.0 + 50.0 * torch.randn(64, 3, dtype=F64, generator=gen)
    zero = torch.zeros(64, task.out_dim, dtype=F64)
    assert task.derived_init_loss(y) == pytest.approx(task.loss(zero, y).item(), rel=1e-13)


def test_prior_loss_classification_entropy_by_hand():
    labels = torch.tensor([0, 0, 1, 2])  # p = (1/2, 1/4, 1/4)
    # H = −(1/2 ln 1/2 + 2 · 1/4 ln 1/4) = 1.5 ln 2
    task = TaskSpec("c", "classification", 3)
    assert task.prior_loss(labels) == pytest.approx(1.5 * math.log(2), rel=1e-15)
    scaled = TaskSpec("c", "classification", 3, loss_scale=2.0, loss_shift=-0.5)
    assert scaled.prior_loss(labels) == pytest.approx(3 * math.log(2) - 0.5, rel=1e-15)
    # balanced labels: H = log K, the derived initial loss
    assert task.prior_loss(torch.tensor([2, 0, 1])) == pytest.approx(LN3, rel=1e-15)
    # a class never seen contributes 0
    assert TaskSpec("c", "classification", 7).prior_loss(labels) == \
        pytest.approx(1.5 * math.log(2), rel=1e-15)


def test_prior_loss_regression_variance_by_hand():
    y = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0]])
    # μ = (3, 12); squared deviations (4, 4), (0, 4), (4, 16): sum 32 over 6 entries → 16/3
    # (population variance, not the n − 1 estimate)
    assert TaskSpec("r", "regression", 2).prior_loss(y) == pytest.approx(16 / 3, rel=1e-15)
    task = TaskSpec("r", "regression", 2, loss_scale=3.0, loss_shift=1.0)
    assert task.prior_loss(y) == pytest.approx(17.0, rel=1e-15)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_prior_loss_is_the_loss_of_the_best_constant_prediction(kind):
    """eq. (3): the prior loss is what a model that knows only the label distribution scores."""
    gen = torch.Generator().manual_seed(1)
    if kind == "classification":
        task = TaskSpec("t", kind, 4, loss_scale=2.0, loss_shift=0.25)
        y = torch.multinomial(torch.tensor([0.6, 0.25, 0.1, 0.05]), 200, replacement=True,
                              generator=gen)
        p = torch.bincount(y, minlength=4).double() / 200
        best = p.log().expand(200, 4)  # logits log p give the label frequencies
    else:
        task = TaskSpec("t", kind, 2, loss_scale=2.0, loss_shift=0.25)
        y = 7.0 + 3.0 * torch.randn(200, 2, dtype=F64, generator=gen)
        best = y.mean(dim=0).expand(200, 2)
    prior = task.prior_loss(y)
    assert prior == pytest.approx(task.loss(best, y).item(), rel=1e-12)
    for _ in range(5):  # any other constant prediction does worse
        other = best + 0.1 * torch.randn(task.out_dim, dtype=F64, generator=gen)
        assert task.loss(other, y).item() > prior
    assert prior < task.derived_init_loss(y)


def test_cross_entropy_matches_torch_reference():
    task = TaskSpec("c", "classification", 4)
    gen = torch.Generator().manual_seed(2)
    logits, y = torch.randn(8, 4, generator=gen), torch.randint(0, 4, (8,), generator=gen)
    assert task.raw_loss(logits, y).item() == F.cross_entropy(logits, y).item()


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("k", [1, 0, -2])
def test_classification_needs_two_classes(k):
    with pytest.raises(ConfigError, match=r"`data\.tasks\.c\.num_classes` must be an integer >= 2 "
                                          rf"for a classification task\. Found `{k}`") as info:
        TaskSpec("c", "classification", k)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("d", [0, -1])
def test_regression_needs_a_dimension(d):
    with pytest.raises(ConfigError, match=rf"`data\.tasks\.r\.dim` must be an integer >= 1\. "
                                          rf"Found `{d}`"):
        TaskSpec("r", "regression", d)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_loss_scale_must_be_finite_and_positive(scale):
    with pytest.raises(ConfigError, match=r"`data\.tasks\.a\.loss_scale` must be a finite number "
                                          r"> 0\. Found"):
        TaskSpec("a", "regression", 1, loss_scale=scale)


@pytest.mark.parametrize("shift", [math.nan, math.inf, -math.inf])
def test_loss_shift_must_be_finite(shift):
    with pytest.raises(ConfigError, match=r"`data\.tasks\.a\.loss_shift` must be a finite number"):
        TaskSpec("a", "regression", 1, loss_shift=shift)


def test_negative_shift_is_allowed():
    assert TaskSpec("a", "regression", 1, loss_shift=-3.0).transform(1.0) == -2.0


@pytest.mark.parametrize("kind", ["ranking", "Classification", ""])
def test_unknown_kind(kind):
    with pytest.raises(ConfigError, match=r"`data\.tasks\.a\.kind` must be one of classification, "
                                          r"regression\. Found") as info:
        TaskSpec("a", kind, 2)
    assert "\n" not in str(info.value)
