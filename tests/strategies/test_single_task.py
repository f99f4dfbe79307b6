"""The single-task baseline: weight 1, objective = the loss, and a one-line error on a task mix."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, run_cli

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.single_task import SingleTask
from mtlbench.tasks import TaskSpec

CLS = TaskSpec(name="cls", kind="classification", out_dim=3)
REG = TaskSpec(name="reg", kind="regression", out_dim=2)


def test_weight_is_one_and_objective_is_the_loss() -> None:
    strategy = SingleTask()
    strategy.setup(SetupContext(tasks=[REG]))
    losses = torch.tensor([3.7], dtype=torch.float64, requires_grad=True)
    assert strategy.weights(losses.detach()).tolist() == [1.0]
    objective = strategy.objective(losses)
    assert objective.item() == pytest.approx(3.7)
    (grad,) = torch.autograd.grad(objective, losses)
    assert grad.tolist() == strategy.weights(losses.detach()).tolist()


def test_setup_rejects_a_task_mix_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        SingleTask().setup(SetupContext(tasks=[CLS, REG]))
    message = str(info.value)
    assert "\n" not in message
    assert "data.only=<task>" in message and "cls, reg" in message


def test_cli_trains_one_task_alone(tmp_path) -> None:
    out = tmp_path / "run"
    proc = run_cli(["train", "strategy=single_task", "data.only=reg_x1", *FAST,
                    f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["tasks"]) == ["reg_x1"]
    assert metrics["strategy"] == "single_task"


def test_cli_without_data_only_fails_with_one_line(tmp_path) -> None:
    proc = run_cli(["train", "strategy=single_task", *FAST, f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path)
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "set data.only=<task>" in output
    assert "Traceback" not in output
