"""The post's invariance claims on whole parameter updates (one SGD step on a small model).

gradnorm_ideal (eq. 10-11, rescale=none): L_k → λ L_k or L_k + c leaves the update unchanged.
realtime (eq. 4) and geometric (eq. 7): L_k → λ L_k leaves it unchanged, L_k + c changes it.
The scale claims hold far from 1: a task's loss_scale from 1e-12 to 1e12 around base scales 1e-12 …
1e8 in float64, and losses 1e-24 … 1e20 in a float32 model (float64 gradient statistics).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.strategies.geometric import Geometric
from mtlbench.strategies.gradnorm_ideal import GradNormIdeal
from mtlbench.strategies.realtime import Realtime
from mtlbench.tasks import TaskSpec
from mtlbench.train import train_step

F64 = torch.float64


def tasks(scale: float = 1.0, shift: float = 0.0) -> list[TaskSpec]:
    return [TaskSpec("c", "classification", 3),
            TaskSpec("r", "regression", 2, loss_scale=scale, loss_shift=shift)]


def update(strategy, task_specs: list[TaskSpec], dtype: torch.dtype = F64,
           gradient: bool = False) -> torch.Tensor:
    """The parameter change of one SGD step (lr 0.1) from a fixed model and batch, flattened (with
    ``gradient``: the gradient it applied, free of the round-off of p_new − p_old)."""
    torch.manual_seed(0)
    backbone = MLPBackbone(input_shape=(4,), width=6, depth=2)
    model = MultiTaskModel(backbone, {t.name: make_head(t, 6) for t in task_specs}).to(dtype)
    x = torch.randn(16, 4, dtype=F64).to(dtype)
    y = {"c": torch.randint(0, 3, (16,)), "r": torch.randn(16, 2, dtype=F64).to(dtype)}
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert train_step(model, task_specs, x, y, strategy, opt).finite
    if gradient:
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])
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


#: (base loss_scale of task "r", factor λ on it): its MSE (≈ 1) times the base spans 1e-12 … 1e8,
#: times λ 1e-24 … 1e20. Old code: a 1e-12 loss floor and an absolute 1e-8 gradient-norm floor.
EXTREME = [(1.0, 1e-10), (1.0, 1e10), (1e-12, 1e-12), (1e-12, 1e12), (1e8, 1e-12), (1e8, 1e12)]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("base_scale, lam", EXTREME)
def test_gradnorm_ideal_update_is_scale_invariant_at_extreme_scales(source, base_scale,
                                                                    lam) -> None:
    base = update(GradNormIdeal(params=source), tasks(base_scale))
    moved = update(GradNormIdeal(params=source), tasks(base_scale * lam))
    assert base.abs().max() > 1e-4
    assert_close(moved, base, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("strategy", [Realtime, Geometric])
@pytest.mark.parametrize("base_scale, lam", EXTREME)
def test_loss_side_update_is_scale_invariant_at_extreme_scales(strategy, base_scale,
                                                               lam) -> None:
    base = update(strategy(), tasks(base_scale), gradient=True)
    moved = update(strategy(), tasks(base_scale * lam), gradient=True)
    # realtime: the same gradient; geometric: times the change of (Π L_i)^(1/n), same direction
    factor = 1.0 if strategy is Realtime else float(moved.norm() / base.norm())
    assert base.norm() > 0 and (strategy is Realtime or factor == pytest.approx(lam ** 0.5, 0.01))
    assert_close(moved, factor * base, rtol=1e-9, atol=1e-12 * float(moved.abs().max()))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scale", [1e-24, 1e-20, 1e20])
def test_gradnorm_ideal_float32_update_is_scale_invariant(source, scale) -> None:
    """A float32 model whose task gradients are ~1e-24 or ~1e20: their squared norms under- or
    overflow float32 (a weight 1/||g|| of 1e8 or 0 before); the float64 statistics keep them."""
    base = update(GradNormIdeal(params=source), tasks(), torch.float32)
    moved = update(GradNormIdeal(params=source), tasks(scale), torch.float32)
    assert base.abs().max() > 1e-4
    assert_close(moved, base, rtol=1e-4, atol=1e-6)
