"""UW: hand values of the weights, the objective and its gradients; s converges to log L; the loop
trains s in its own parameter group; resume is exact."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config, killed_and_resumed
from torch.testing import assert_close

from mtlbench import train
from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.uw import UncertaintyWeighting
from mtlbench.tasks import TaskSpec
from mtlbench.train import run

TASKS = [TaskSpec(name=f"t{i}", kind="regression", out_dim=1) for i in range(3)]


def uw(**kwargs) -> UncertaintyWeighting:
    strategy = UncertaintyWeighting(**kwargs)
    strategy.setup(SetupContext(tasks=TASKS))
    return strategy


def test_weights_objective_and_gradients_by_hand() -> None:
    strategy = uw()
    with torch.no_grad():
        strategy.log_var.copy_(torch.tensor([-0.5, 0.0, 1.0]))
    losses = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    w = strategy.weights(losses.detach())
    assert_close(w, torch.tensor([0.5 * math.exp(0.5), 0.5, 0.5 * math.exp(-1.0)],
                                 dtype=torch.float64), rtol=1e-7, atol=0)
    objective = strategy.objective(losses)
    by_hand = (2 / 2 * math.exp(0.5) - 0.25) + (3 / 2 + 0) + (4 / 2 * math.exp(-1) + 0.5)
    assert objective.item() == pytest.approx(by_hand, rel=1e-7)
    objective.backward()
    assert_close(losses.grad, w, rtol=1e-7, atol=0)  # ∂L/∂L_i = w_i
    expected_s = 0.5 * (1 - torch.tensor([2 * math.exp(0.5), 3.0, 4 * math.exp(-1)]))
    assert_close(strategy.log_var.grad, expected_s.float(), rtol=1e-6, atol=1e-7)


def test_log_variance_converges_to_log_of_the_loss() -> None:
    strategy = uw()
    losses = torch.tensor([0.01, 1.0, 250.0])
    opt = torch.optim.Adam(strategy.parameters(), lr=0.05)
    for _ in range(5000):
        opt.zero_grad()
        strategy.objective(losses).backward()
        opt.step()
    assert_close(strategy.log_var.detach(), losses.log(), rtol=0, atol=1e-3)
    assert_close(strategy.weights(losses), 0.5 / losses, rtol=2e-3, atol=0)


def test_bad_hyperparameters_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"`init` must be a finite real number\. "
                                          r"Found `init = nan`"):
        UncertaintyWeighting(init=math.nan)
    with pytest.raises(ConfigError, match=r"`lr` must be > 0\. Found `lr = 0`"):
        UncertaintyWeighting(lr=0)


ARGS = ["strategy=uw", "trainer.max_steps=8", "trainer.eval_every=4",
        "trainer.checkpoint_every=4", "trainer.batch_size=32", "data.n_train=256",
        "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]


def test_loop_trains_s_in_its_own_group(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Its own group: own lr, no weight decay; s moves; the network sees w_i = e^{-s_i}/2."""
    seen = {}
    build = train.build_optimizer

    def spy(cfg, model, strategy):
        seen["optimizer"], seen["strategy"] = build(cfg, model, strategy), strategy
        return seen["optimizer"]

    monkeypatch.setattr(train, "build_optimizer", spy)
    run(compose_config([*ARGS, "strategy.lr=0.1", "optimizer.weight_decay=0.01"]), tmp_path, "uw")
    groups, strategy = seen["optimizer"].param_groups, seen["strategy"]
    assert len(groups) == 2 and groups[1]["params"] == [strategy.log_var]
    assert groups[1]["lr"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["lr"] == 0.001 and groups[0]["weight_decay"] == 0.01
    assert not torch.equal(strategy.log_var.detach(), torch.full((4,), -0.5))


def test_resume_is_exact(tmp_path) -> None:
    full, resumed = killed_and_resumed(ARGS, "uw", tmp_path, at_step=4)
    assert resumed == full
