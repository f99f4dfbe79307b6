"""FAMO: first-step weights, one logit update by hand, the objective's gradient, exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import killed_and_resumed
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.famo import FAMO
from mtlbench.tasks import TaskSpec

TASKS = [TaskSpec(name=f"t{i}", kind="regression", out_dim=1) for i in range(2)]
F64 = torch.float64


def famo(**kwargs) -> FAMO:
    strategy = FAMO(**kwargs)
    strategy.setup(SetupContext(tasks=TASKS))
    return strategy


def test_first_step_weights_are_normalized_inverse_losses() -> None:
    """z uniform: w_i = (1/D_i) / Σ_j (1/D_j), so Σ w_i D_i = 1."""
    losses = torch.tensor([2.0, 0.5], dtype=F64)
    w = famo(eps=1e-300).weights(losses)
    assert_close(w, torch.tensor([0.2, 0.8], dtype=F64), rtol=1e-12, atol=0)


def test_a_step_moves_the_logits_against_the_task_that_fell_more() -> None:
    """The batch's losses (1, 1) before and (0.5, 1) after the step: δ = (log 2, 0),
    ∂z/∂ξᵀ δ = z_i (δ_i − Σ z_j δ_j) = (+, −) log 2 / 4; Adam's first step moves ξ by
    −lr · sign: ξ = (−0.025, +0.025) (weight decay is 0 at ξ = 0). The weights only read ξ."""
    strategy = famo(eps=1e-300)
    assert FAMO.losses_after_step  # the loop evaluates the batch again after the step
    strategy.after_step_losses(torch.tensor([1.0, 1.0], dtype=F64),
                               torch.tensor([0.5, 1.0], dtype=F64))
    assert_close(strategy.logits.detach(), torch.tensor([-0.025, 0.025], dtype=F64), rtol=1e-6,
                 atol=0)
    losses = torch.tensor([0.5, 1.0], dtype=F64)
    w = strategy.weights(losses)
    assert_close(strategy.weights(losses), w, rtol=0, atol=0)  # weights() moves nothing
    z = torch.softmax(torch.tensor([-0.025, 0.025], dtype=F64), dim=0)
    expected = (z / losses) / (z / losses).sum()
    assert_close(w, expected, rtol=1e-6, atol=0)
    assert w[1] / w[0] == pytest.approx(0.5 * math.exp(0.05), rel=1e-6)


def test_a_checkpoint_of_the_consecutive_batch_famo_is_refused() -> None:
    """FAMO once learned ξ from two consecutive batches; resuming such a state under the fixed
    rule would mix the two methods in one run, so it is refused."""
    old = {"logits": torch.zeros(2, dtype=F64), "optimizer": famo().optimizer.state_dict(),
           "previous": None}
    with pytest.raises(ValueError, match="consecutive batches"):
        famo().load_state_dict(old)


def test_objective_gradient_equals_the_weights() -> None:
    strategy = famo()
    strategy.after_step_losses(torch.tensor([3.0, 1.0], dtype=F64),
                               torch.tensor([2.5, 1.0], dtype=F64))
    losses = torch.tensor([2.0, 1.5], dtype=F64, requires_grad=True)
    w = strategy.weights(losses.detach())
    (grad,) = torch.autograd.grad(strategy.objective(losses), losses)
    assert_close(grad, w, rtol=1e-12, atol=0)


def test_bad_hyperparameters_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"`lr` must be > 0\. Found `lr = 0`"):
        FAMO(lr=0)
    with pytest.raises(ConfigError, match=r"`gamma` must be >= 0\. Found `gamma = -1`"):
        FAMO(gamma=-1)


ARGS = ["strategy=famo", "trainer.max_steps=12", "trainer.eval_every=6",
        "trainer.checkpoint_every=5", "trainer.batch_size=32", "data.n_train=256",
        "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]


def test_resume_is_exact(tmp_path) -> None:
    """ξ and its Adam state are checkpointed: killed after step 5 and resumed, the run ends
    where an uninterrupted one does."""
    full, resumed = killed_and_resumed(ARGS, "famo", tmp_path, at_step=5)
    assert resumed == full
