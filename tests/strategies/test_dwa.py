"""DWA: ones for two epochs, then n·softmax(r/T) of the epoch-mean ratios, by hand; the loop's
epoch hooks; resume mid-epoch is exact."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config, killed_and_resumed
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.dwa import DWA
from mtlbench.tasks import TaskSpec
from mtlbench.train import run

TASKS = [TaskSpec(name=f"t{i}", kind="regression", out_dim=1) for i in range(2)]


def dwa(**kwargs) -> DWA:
    strategy = DWA(**kwargs)
    strategy.setup(SetupContext(tasks=TASKS))
    return strategy


def epoch(strategy: DWA, index: int, *steps: list[float]) -> None:
    for losses in steps:
        strategy.after_step(torch.tensor(losses))
    strategy.end_of_epoch(index)


def test_weights_by_hand() -> None:
    strategy = dwa()
    one = torch.tensor([5.0, 7.0])
    assert torch.equal(strategy.weights(one), torch.ones(2))
    epoch(strategy, 0, [4.0, 2.0], [2.0, 2.0])  # means 3, 2
    assert torch.equal(strategy.weights(one), torch.ones(2))
    epoch(strategy, 1, [1.5, 2.0], [1.5, 1.0])  # means 1.5, 1.5: r = (0.5, 0.75)
    e1, e2 = math.exp(0.5 / 2), math.exp(0.75 / 2)
    expected = torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)])
    assert_close(strategy.weights(one), expected, rtol=1e-6, atol=0)
    epoch(strategy, 2, [3.0, 1.5])  # means 3, 1.5: r = (2, 1) — only the last two epochs count
    e1, e2 = math.exp(2 / 2), math.exp(1 / 2)
    assert_close(strategy.weights(one), torch.tensor([2 * e1, 2 * e2]) / (e1 + e2), rtol=1e-6,
                 atol=0)


def test_large_temperature_tends_to_equal_and_objective_matches() -> None:
    strategy = dwa(temperature=1e9)
    epoch(strategy, 0, [1.0, 1.0])
    epoch(strategy, 1, [0.1, 10.0])
    losses = torch.tensor([0.3, 0.9], requires_grad=True)
    assert_close(strategy.weights(losses.detach()), torch.ones(2), rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(strategy.objective(losses), losses)
    assert torch.equal(grad, strategy.weights(losses.detach()))


def test_bad_temperature_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"`temperature` must be > 0\. Found `temperature = 0`"):
        DWA(temperature=0)


ARGS = ["strategy=dwa", "trainer.max_steps=40", "trainer.eval_every=20",
        "trainer.checkpoint_every=10", "trainer.batch_size=32", "data.n_train=256",
        "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]  # 8 steps per epoch


def test_loop_reports_steps_and_epochs(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    calls = []
    monkeypatch.setattr(DWA, "after_step", lambda self, losses: calls.append("s"))
    monkeypatch.setattr(DWA, "end_of_epoch", lambda self, e: calls.append(f"e{e}"))
    run(compose_config(ARGS), tmp_path, "dwa")
    assert calls.count("s") == 40
    assert [c for c in calls if c != "s"] == ["e0", "e1", "e2", "e3", "e4"]
    assert calls.index("e0") == 8 and calls.index("e1") == 17  # after steps 8 and 16


def test_resume_mid_epoch_is_exact(tmp_path) -> None:
    """Killed after step 30, mid-epoch (epochs end at 8, 16, 24, 32): the running sums resume."""
    full, resumed = killed_and_resumed(ARGS, "dwa", tmp_path, at_step=30)
    assert resumed == full
