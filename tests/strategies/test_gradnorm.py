"""GradNorm (Chen et al. 2018): weight updates by hand, invariants, state, and the paper's toy."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli
from torch.testing import assert_close

from mtlbench.data.gradnorm_toy import build
from mtlbench.errors import ConfigError
from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.strategies.base import GradientStats, SetupContext
from mtlbench.strategies.gradnorm import GradNorm
from mtlbench.tasks import TaskSpec
from mtlbench.train import batch_indices, train_step

F64 = torch.float64


def stats(norms: list[float]) -> GradientStats:
    n = torch.tensor(norms, dtype=F64)
    return GradientStats(norms=n, gramian=torch.diag(n**2))


def test_weight_update_by_hand_sgd() -> None:
    """Two tasks, SGD on w: ∂L_grad/∂w_i = sign(w_i n_i − Ḡ r_i^α) n_i, then Σ w = 2."""
    s = GradNorm(alpha=2.0, weight_lr=0.1, weight_optimizer="sgd")
    # step 0: L(0) = losses, r = (1, 1); G = (1, 3), Ḡ = 2; grad = (-1, +3)
    w0 = s.weights(torch.tensor([2.0, 5.0], dtype=F64), stats([1.0, 3.0]))
    assert_close(w0, torch.ones(2, dtype=F64))  # the model update uses w(0) = 1
    w1 = torch.tensor([1.0 + 0.1, 1.0 - 0.3], dtype=F64)
    w1 = 2 * w1 / w1.sum()
    assert_close(s.w, w1)
    # step 1: L̃ = (1/2, 4/5)... with losses (1, 4): L̃ = (0.5, 0.8), r = L̃ / 0.65
    got = s.weights(torch.tensor([1.0, 4.0], dtype=F64), stats([2.0, 1.0]))
    assert_close(got, w1)
    r = torch.tensor([0.5, 0.8], dtype=F64) / 0.65
    g = w1 * torch.tensor([2.0, 1.0], dtype=F64)
    target = g.mean() * r**2
    w2 = w1 - 0.1 * torch.sign(g - target) * torch.tensor([2.0, 1.0], dtype=F64)
    assert_close(s.w, 2 * w2 / w2.sum())


def test_weight_update_by_hand_adam() -> None:
    """Adam's first step moves w_i by lr · sign(∂L_grad/∂w_i) (up to Adam's eps)."""
    s = GradNorm(alpha=1.5, weight_lr=0.025)
    s.weights(torch.tensor([1.0, 1.0], dtype=F64), stats([4.0, 1.0]))
    w = torch.tensor([1 - 0.025, 1 + 0.025], dtype=F64)
    assert_close(s.w, 2 * w / w.sum(), rtol=1e-6, atol=1e-8)


def test_weights_stay_positive_and_sum_to_n() -> None:
    gen = torch.Generator().manual_seed(0)
    s = GradNorm(alpha=0.5, weight_lr=0.5)  # a big step to push weights toward 0
    for _ in range(300):
        losses = torch.rand(4, generator=gen, dtype=F64) * 10
        norms = torch.rand(4, generator=gen, dtype=F64) * torch.tensor([1, 10, 100, 0], dtype=F64)
        w = s.weights(losses, stats(norms.tolist()))
        assert (w > 0).all() and torch.isfinite(w).all()
        assert_close(w.sum(), torch.tensor(4.0, dtype=F64))
    assert (s.w > 0).all()


def test_derived_initial_losses_and_state_round_trip() -> None:
    tasks = [TaskSpec("c", "classification", 10), TaskSpec("r", "regression", 2)]
    targets = {"c": torch.zeros(5, dtype=torch.long), "r": torch.full((5, 2), 3.0)}
    s = GradNorm(initial="derived")
    s.setup(SetupContext(tasks=tasks, train_targets=targets))
    assert_close(s.initial_losses, torch.tensor([torch.log(torch.tensor(10.0)).item(), 9.0],
                                                dtype=F64))
    for _ in range(3):
        s.weights(torch.tensor([2.0, 5.0], dtype=F64), stats([1.0, 3.0]))
    blob = io.BytesIO()
    torch.save(s.state_dict(), blob)
    blob.seek(0)
    t = GradNorm(initial="derived")
    t.load_state_dict(torch.load(blob, weights_only=True))
    assert_close(t.w, s.w)
    a = s.weights(torch.tensor([1.0, 4.0], dtype=F64), stats([2.0, 1.0]))
    b = t.weights(torch.tensor([1.0, 4.0], dtype=F64), stats([2.0, 1.0]))
    assert_close(a, b)
    assert_close(t.w, s.w)  # same Adam state → same next weights


@pytest.mark.parametrize("bad, message", [
    ({"alpha": -1}, "Parameter `alpha` must be >= 0. Found `alpha = -1`."),
    ({"weight_lr": 0}, "Parameter `weight_lr` must be > 0. Found `weight_lr = 0`."),
    ({"initial": "measured"}, "Parameter `initial` must be one of first_step, derived."),
])
def test_bad_hyperparameters(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        GradNorm(**bad)
    assert message in str(info.value)


def toy_trajectory(steps: int, alpha: float = 0.12) -> list[list[float]]:
    """w(t) on the paper's toy with σ = (1, 100) (MLP 128×2, Adam 1e-3, batch 128)."""
    torch.manual_seed(0)
    data = build(seed=0, tasks=None, sigmas=[1.0, 100.0], n_train=2048, n_val=8, n_test=8)
    backbone = MLPBackbone(input_shape=(250,), width=128, depth=2)
    model = MultiTaskModel(backbone, {t.name: make_head(t, 128) for t in data.tasks})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    strategy = GradNorm(alpha=alpha)
    trajectory = []
    for step in range(steps):
        x, y = data.train.batch(batch_indices(step, len(data.train), 128, 0))
        result = train_step(model, data.tasks, x, y, strategy, opt)
        trajectory.append(result.weights.tolist())
    return trajectory


def test_toy_large_sigma_task_gets_the_smaller_weight() -> None:
    trajectory = toy_trajectory(120)
    crossed = [t for t, (w0, w1) in enumerate(trajectory) if w1 < w0]
    assert crossed and crossed[0] < 100, trajectory[::20]
    w0, w1 = trajectory[-1]
    assert w1 < w0 and abs(w0 + w1 - 2) < 1e-5  # float32 weights


@pytest.mark.slow
@pytest.mark.parametrize("args", [["strategy=gradnorm", "strategy.params=representation"],
                                  ["strategy=gradnorm", "data=gradnorm_toy", "strategy.alpha=0.12",
                                   "strategy.initial=derived"]])
def test_cli_end_to_end(args: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(["train", *args, *FAST, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "metrics.json").exists()
