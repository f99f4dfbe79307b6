"""The post's invariance claims on whole parameter updates (one SGD step on a small model).

gradnorm_ideal (eq. 10-11, rescale=none): L_k → λ L_k or L_k + c leaves the update unchanged.
realtime (eq. 4): L_k → λ L_k leaves it unchanged, L_k + c changes it.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.strategies.gradnorm_ideal import GradNormIdeal
from mtlbench.strategies.realtime import Realtime
from mtlbench.tasks import TaskSpec
from mtlbench.train import train_step

F64 = torch.float64


def tasks(scale: float = 1.0, shift: float = 0.0) -> list[TaskSpec]:
    return [TaskSpec("c", "classification", 3),
            TaskSpec("r", "regression", 2, loss_scale=scale, loss_shift=shift)]


def update(strategy, task_specs: list[TaskSpec]) -> torch.Tensor:
    """The parameter change of one SGD step (lr 0.1) from a fixed model and batch, flattened."""
    torch.manual_seed(0)
    backbone = MLPBackbone(input_shape=(4,), width=6, depth=2)
    model = MultiTaskModel(backbone, {t.name: make_head(t, 6) for t in task_specs}).to(F64)
    x = torch.randn(16, 4, dtype=F64)
    y = {"c": torch.randint(0, 3, (16,)), "r": torch.randn(16, 2, dtype=F64)}
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert train_step(model, task_specs, x, y, strategy, opt).finite
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before


SOURCES = ["shared", "last_shared", "representation"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scale, shift", [(1e3, 0.0), (1e-3, 0.0), (1.0, 5.0), (37.0, -0.5)])
def test_gradnorm_ideal_update_is_scale_and_shift_invariant(source, scale, shift) -> None:
    base = update(GradNormIdeal(params=source), tasks())
    moved = update(GradNormIdeal(params=source), tasks(scale, shift))
    assert base.abs().max() > 1e-4
    assert_close(moved, base, rtol=1e-9, atol=1e-12)


def test_gradnorm_ideal_rescaled_direction_is_invariant_but_length_is_not() -> None:
    base = update(GradNormIdeal(rescale="mean"), tasks())
    scaled = update(GradNormIdeal(rescale="mean"), tasks(scale=100.0))
    cos = base @ scaled / (base.norm() * scaled.norm())
    assert_close(cos, torch.tensor(1.0, dtype=F64), rtol=1e-9, atol=1e-9)
    assert scaled.norm() > 10 * base.norm()
    assert_close(update(GradNormIdeal(rescale="mean"), tasks(shift=3.0)), base)


def test_realtime_is_scale_invariant() -> None:
    assert_close(update(Realtime(), tasks(scale=250.0)), update(Realtime(), tasks()),
                 rtol=1e-9, atol=1e-12)


def test_realtime_is_not_shift_invariant() -> None:
    base, shifted = update(Realtime(), tasks()), update(Realtime(), tasks(shift=5.0))
    assert (shifted - base).norm() > 0.1 * base.norm()
    cos = base @ shifted / (base.norm() * shifted.norm())
    assert cos < 0.999  # the direction changes, not just the length
