"""IMTL-L: hand values, convergence of e^s to 1/L, the loop's parameter group, exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import killed_and_resumed
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.imtl_l import IMTLL
from mtlbench.tasks import TaskSpec

TASKS = [TaskSpec(name=f"t{i}", kind="regression", out_dim=1) for i in range(3)]


def imtl_l(**kwargs) -> IMTLL:
    strategy = IMTLL(**kwargs)
    strategy.setup(SetupContext(tasks=TASKS))
    return strategy


def test_weights_objective_and_gradients_by_hand() -> None:
    strategy = imtl_l()
    with torch.no_grad():
        strategy.log_scale.copy_(torch.tensor([0.0, -1.0, 2.0]))
    losses = torch.tensor([2.0, 3.0, 0.5], dtype=torch.float64, requires_grad=True)
    w = strategy.weights(losses.detach())
    assert_close(w, torch.tensor([1.0, math.exp(-1), math.exp(2)], dtype=torch.float64),
                 rtol=1e-7, atol=0)
    objective = strategy.objective(losses)
    by_hand = 2.0 + (3 * math.exp(-1) + 1) + (0.5 * math.exp(2) - 2)
    assert objective.item() == pytest.approx(by_hand, rel=1e-7)
    objective.backward()
    assert_close(losses.grad, w, rtol=1e-7, atol=0)
    expected = torch.tensor([2.0 - 1, 3 * math.exp(-1) - 1, 0.5 * math.exp(2) - 1])
    assert_close(strategy.log_scale.grad, expected, rtol=1e-6, atol=1e-7)


def test_scales_converge_to_one_over_the_loss() -> None:
    strategy = imtl_l()
    losses = torch.tensor([0.01, 1.0, 250.0])
    opt = torch.optim.Adam(strategy.parameters(), lr=0.05)
    for _ in range(5000):
        opt.zero_grad()
        strategy.objective(losses).backward()
        opt.step()
    assert_close(strategy.weights(losses) * losses, torch.ones(3), rtol=2e-3, atol=0)


def test_bad_hyperparameters_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"`init` must be a finite real number"):
        IMTLL(init=math.inf)
    with pytest.raises(ConfigError, match=r"`lr` must be > 0\. Found `lr = -1`"):
        IMTLL(lr=-1)


ARGS = ["strategy=imtl_l", "trainer.max_steps=8", "trainer.eval_every=4",
        "trainer.checkpoint_every=4", "trainer.batch_size=32", "data.n_train=256",
        "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]


def test_resume_is_exact(tmp_path) -> None:
    full, resumed = killed_and_resumed(ARGS, "imtl_l", tmp_path, at_step=4)
    assert resumed == full
