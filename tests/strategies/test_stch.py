"""STCH (Lin et al. 2024, as LibMTL): log-loss warm-up weights 1/L_i, the nadir from epoch
``warmup_epoch`` only, 2-task weights by hand, the μ → 0 (max) and μ → ∞ (log-loss sum) limits,
the objective's gradient, scale (but not shift) invariance, and exact resumes mid-warm-up, mid
nadir epoch and after it."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import compose_config, killed_and_resumed
from torch.testing import assert_close

from mtlbench import checkpoint
from mtlbench.errors import ConfigError
from mtlbench.strategies.base import SetupContext
from mtlbench.strategies.stch import STCH
from mtlbench.tasks import TaskSpec
from mtlbench.train import run

TASKS = [TaskSpec(name=f"t{i}", kind="regression", out_dim=1) for i in range(2)]
F64 = torch.float64


def stch(**kwargs) -> STCH:
    strategy = STCH(**kwargs)
    strategy.setup(SetupContext(tasks=TASKS))
    return strategy


def epoch(strategy: STCH, index: int, *steps: list[float]) -> None:
    for losses in steps:
        strategy.after_step(torch.tensor(losses, dtype=F64))
    strategy.end_of_epoch(index)


def after_warmup(mu: float = 1.0) -> STCH:
    """warmup_epoch = 0: epoch 0's mean losses (3, 6) are the nadir."""
    strategy = stch(mu=mu, warmup_epoch=0)
    epoch(strategy, 0, [2.0, 4.0], [4.0, 8.0])
    assert_close(strategy.nadir, torch.tensor([3.0, 6.0], dtype=F64), rtol=0, atol=0)
    return strategy


def test_warmup_weights_are_inverse_losses_and_the_nadir_is_epoch_e_only() -> None:
    strategy = stch(warmup_epoch=2)
    losses = torch.tensor([0.5, 4.0], dtype=F64)
    for index, steps in enumerate([([9.0, 9.0],), ([7.0, 7.0],), ([2.0, 4.0], [4.0, 2.0])]):
        assert torch.equal(strategy.weights(losses), torch.tensor([2.0, 0.25], dtype=F64))
        epoch(strategy, index, *steps)
        # epochs 0, 1: plain warm-up; epoch 2 (= warmup_epoch): averaged into the nadir
        assert (strategy.nadir is None) == (index < 2)
    assert_close(strategy.nadir, torch.tensor([3.0, 3.0], dtype=F64), rtol=0, atol=0)
    epoch(strategy, 3, [100.0, 100.0])  # later epochs do not move it
    assert_close(strategy.nadir, torch.tensor([3.0, 3.0], dtype=F64), rtol=0, atol=0)


def test_an_epoch_without_applied_steps_postpones_the_nadir() -> None:
    strategy = stch(warmup_epoch=0)
    strategy.end_of_epoch(0)  # every step of epoch 0 was skipped
    assert strategy.nadir is None
    epoch(strategy, 1, [1.0, 5.0])
    assert_close(strategy.nadir, torch.tensor([1.0, 5.0], dtype=F64), rtol=0, atol=0)


def test_two_task_weights_by_hand() -> None:
    """N = (3, 6), L = (1.5, 12): L/N = (0.5, 2). μ = 1: softmax(log 0.5, log 2) = (0.2, 0.8),
    w = 2 (0.2/1.5, 0.8/12); μ = 0.5: exp(ℓ/μ) = (L/N)² = (0.25, 4), softmax = (1, 16)/17."""
    losses = torch.tensor([1.5, 12.0], dtype=F64)
    w = after_warmup(1.0).weights(losses)
    assert_close(w, torch.tensor([0.4 / 1.5, 1.6 / 12], dtype=F64), rtol=1e-14, atol=0)
    w = after_warmup(0.5).weights(losses)
    assert_close(w, torch.tensor([2 / 17 / 1.5, 32 / 17 / 12], dtype=F64), rtol=1e-14, atol=0)
    assert (w * losses).sum().item() == pytest.approx(2.0, rel=1e-14)  # Σ w_i L_i = n


def test_objective_gradient_equals_the_weights() -> None:
    for strategy in (stch(), after_warmup(1.0), after_warmup(0.3)):
        losses = torch.tensor([0.7, 9.0], dtype=F64, requires_grad=True)
        (grad,) = torch.autograd.grad(strategy.objective(losses), losses)
        assert_close(grad, strategy.weights(losses.detach()), rtol=1e-13, atol=0)
    # the value: n μ log Σ (L_i/N_i)^(1/μ); μ = 1 at L/N = (0.5, 2): 2 log 2.5
    value = after_warmup(1.0).objective(torch.tensor([1.5, 12.0], dtype=F64))
    assert value.item() == pytest.approx(2 * math.log(2.5), rel=1e-14)


def test_small_mu_is_the_tchebycheff_max_and_large_mu_the_log_loss_sum() -> None:
    losses = torch.tensor([1.5, 12.0], dtype=F64)  # task 1 is furthest above its nadir (2 vs 0.5)
    small = after_warmup(1e-3)
    assert_close(small.weights(losses), torch.tensor([0.0, 2 / 12], dtype=F64), rtol=1e-12,
                 atol=1e-300)
    assert small.objective(losses).item() == pytest.approx(2 * math.log(2.0), rel=1e-9)
    # μ → ∞: softmax → 1/n, w_i → 1/L_i (the warm-up's weights, not equal weights)
    assert_close(after_warmup(1e9).weights(losses), 1.0 / losses, rtol=1e-8, atol=0)
    tiny = after_warmup(1e-300)  # no overflow for any μ > 0
    assert torch.isfinite(tiny.weights(losses)).all()


def test_scale_invariant_but_not_shift_invariant() -> None:
    """Task 1's losses λ times larger throughout (nadir epoch included): w_1 λ = w_1, w_0 equal.
    A shift of task 0's losses changes the direction."""
    base, scaled, shifted = (stch(warmup_epoch=0) for _ in range(3))
    steps = [[2.0, 4.0], [4.0, 8.0], [3.0, 7.0]]
    lam = torch.tensor([1.0, 1e7], dtype=F64)
    shift = torch.tensor([5.0, 0.0], dtype=F64)
    for s in steps:
        s = torch.tensor(s, dtype=F64)
        base.after_step(s)
        scaled.after_step(s * lam)
        shifted.after_step(s + shift)
    for strategy in (base, scaled, shifted):
        strategy.end_of_epoch(0)
    losses = torch.tensor([1.5, 12.0], dtype=F64)
    assert_close(scaled.weights(losses * lam) * lam, base.weights(losses), rtol=1e-13, atol=0)
    w, w_shifted = base.weights(losses), shifted.weights(losses + shift)
    assert abs(float(w_shifted[0] / w_shifted[1] - w[0] / w[1])) > 0.1 * float(w[0] / w[1])
    assert base.scale_invariant and not base.shift_invariant


def test_zero_losses_give_finite_weights() -> None:
    for strategy in (stch(), after_warmup()):
        for dtype in (torch.float32, F64):
            w = strategy.weights(torch.tensor([0.0, 3.0], dtype=dtype))
            assert w.dtype == dtype and torch.isfinite(w).all() and (w > 0).all()


def drive(strategy: STCH, losses: list[list[float]], start: int, per_epoch: int
          ) -> list[torch.Tensor]:
    """The loop's calls for steps ``start`` … : weights, after_step, end_of_epoch."""
    out = []
    for t, row in enumerate(losses[start:], start):
        x = torch.tensor(row, dtype=F64)
        out.append(strategy.weights(x))
        strategy.after_step(x)
        if (t + 1) % per_epoch == 0:
            strategy.end_of_epoch(t // per_epoch)
    return out


@pytest.mark.parametrize("split", [2, 5, 7, 10])  # mid-warm-up, mid nadir epoch, after, at an end
def test_state_dict_resumes_exactly(split: int) -> None:
    gen = torch.Generator().manual_seed(0)
    losses = (torch.rand(14, 2, dtype=F64, generator=gen) * 5 + 0.1).tolist()
    strategy = stch(mu=0.4, warmup_epoch=1)  # 3 steps per epoch: the nadir from steps 3-5
    full = drive(strategy, losses, 0, 3)
    first = stch(mu=0.4, warmup_epoch=1)
    drive(first, losses[:split], 0, 3)
    resumed = stch(mu=0.4, warmup_epoch=1)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    rest = drive(resumed, losses, split, 3)
    for a, b in zip(full[split:], rest, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(full[-1], 1.0 / torch.tensor(losses[-1], dtype=F64))  # STCH by then


def test_bad_hyperparameters_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"`mu` must be > 0\. Found `mu = 0`"):
        STCH(mu=0)
    with pytest.raises(ConfigError, match=r"`warmup_epoch` must be an integer >= 0\. "
                                          r"Found `warmup_epoch = -1`"):
        STCH(warmup_epoch=-1)


ARGS = ["strategy=stch", "strategy.warmup_epoch=1", "trainer.max_steps=28",
        "trainer.eval_every=14", "trainer.checkpoint_every=4", "trainer.batch_size=32",
        "data.n_train=256", "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]
# 8 steps per epoch: warm-up in steps 1-16, the nadir from steps 9-16, STCH from step 17 on


@pytest.mark.slow
@pytest.mark.parametrize("at_step", [12, 20])
def test_trains_end_to_end_and_resumes_exactly(tmp_path, at_step: int) -> None:
    """Through the real loop: finite metrics, every step applied; killed mid nadir epoch (step
    12) or after the warm-up (step 20) and resumed, the run ends identically."""
    returned = run(compose_config(ARGS), tmp_path / "e2e", "stch")
    written = json.loads((tmp_path / "e2e" / "metrics.json").read_text())
    assert written["steps"] == 28 and written["skipped_steps"] == 0
    assert returned["tasks"] == written["tasks"]
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "e2e")[-1][1])["strategy"]
    assert state["epoch"] == 3 and state["count"] == 8 and state["nadir"].shape == (4,)  # 4 tasks
    full, resumed = killed_and_resumed(ARGS, "stch", tmp_path, at_step=at_step)
    assert resumed == full


def test_after_warm_up_it_is_n_times_torchjds_stch_of_the_normalized_log_losses() -> None:
    """torchjd's ``STCH`` scalarizer (μ log Σ exp(λ_i (f_i − z_i)/μ)) with λ = 1, z = 0 on
    f_i = log(L_i / N_i): our objective is n times it, and our weights its gradient times n."""
    from torchjd.scalarization import STCH as TorchjdSTCH

    from mtlbench.strategies.base import SetupContext
    from mtlbench.strategies.stch import STCH
    from mtlbench.tasks import TaskSpec

    tasks = [TaskSpec(f"t{i}", "regression", 1) for i in range(3)]
    for mu in (0.1, 1.0, 3.0):
        strategy = STCH(mu=mu, warmup_epoch=0)
        strategy.setup(SetupContext(tasks=tasks))
        strategy.after_step(torch.tensor([2.0, 0.5, 7.0], dtype=torch.float64))
        strategy.end_of_epoch(0)
        assert strategy.nadir is not None
        losses = torch.tensor([1.5, 0.2, 9.0], dtype=torch.float64, requires_grad=True)
        scalarizer = TorchjdSTCH(mu=mu, weights=torch.ones(3, dtype=torch.float64))
        theirs = scalarizer((losses / strategy.nadir).log())
        (grad,) = torch.autograd.grad(theirs, losses)
        assert torch.allclose(strategy.objective(losses.detach()), 3 * theirs.detach(),
                              rtol=1e-12)
        assert torch.allclose(strategy.weights(losses.detach()), 3 * grad, rtol=1e-12)
