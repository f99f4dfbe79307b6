"""Training protocols: a run's length in epochs or steps, the ``scheduler`` group (per epoch or
per step, state in checkpoints), best-validation model selection (``trainer.select``), and their
one-line errors through the real CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import compose_config, killed_and_resumed, run_cli
from omegaconf import OmegaConf
from test_rundir import snapshot

from mtlbench import checkpoint, train
from mtlbench.errors import ConfigError
from mtlbench.selection import build_criterion
from mtlbench.tasks import TaskSpec

#: 256 training rows, batch 32: 8 steps an epoch.
TINY = ["trainer.batch_size=32", "data.n_train=256", "data.n_val=64", "data.n_test=64",
        "trainer.device=cpu", "model.width=16"]
EPOCHS = [*TINY, "trainer.max_steps=null", "trainer.epochs=3"]


def run(tmp_path: Path, args: list[str], name: str = "run") -> tuple[dict, train.Loop]:
    """Train in-process; returns metrics.json's content and the finished loop."""
    loops: list[train.Loop] = []
    original = train.Loop.train

    def keep(self: train.Loop, *a: object, **k: object) -> dict:
        loops.append(self)
        return original(self, *a, **k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.Loop, "train", keep)
        train.run(compose_config(args), tmp_path / name, "equal")
    return json.loads((tmp_path / name / "metrics.json").read_text()), loops[0]


def test_epochs_set_the_length_and_per_epoch_schedules(tmp_path: Path) -> None:
    """3 epochs of 8 steps; ExponentialLR per epoch: lr = lr_0 · 0.5³ at the end (per step it
    would be 0.5²⁴)."""
    metrics, loop = run(tmp_path, [*EPOCHS, "scheduler=exponential", "scheduler.gamma=0.5"])
    assert metrics["steps"] == 24 and metrics["epochs"] == 3.0
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 3, rel=1e-12)
    _, loop = run(tmp_path, [*EPOCHS, "scheduler=exponential", "scheduler.gamma=0.5",
                             "scheduler.interval=step"], "per_step")
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 24, rel=1e-12)


def test_multistep_and_cosine(tmp_path: Path) -> None:
    _, loop = run(tmp_path, [*EPOCHS, "scheduler=multistep", "scheduler.milestones=[1,2]",
                             "scheduler.gamma=0.1"])
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5, rel=1e-9)
    _, loop = run(tmp_path, [*EPOCHS, "scheduler=cosine", "scheduler.eta_min=1e-4"], "cos")
    assert loop.schedule.scheduler.T_max == 3  # null: the run's length in epochs
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4, rel=1e-9)


def test_best_val_reports_the_selected_models_test_metrics(tmp_path: Path) -> None:
    """The selected evaluation is the best of the logged ones; the reported test metrics are the
    selected model's, and the last model's stay under ``last`` (equal to a select=last run)."""
    args = [*EPOCHS, "trainer.epochs=4", "trainer.eval_every=epoch", "optimizer.lr=0.01"]
    last, _ = run(tmp_path, args, "last")
    best, loop = run(tmp_path, [*args, "trainer.select=best_val",
                                "trainer.select_metric=val/mse/reg_x1"], "best")
    assert best["last"]["tasks"] == last["tasks"] and best["last"]["step"] == 32
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "best"))
    acc.Reload()
    evals = {e.step: e.value for e in acc.Scalars("val/mse/reg_x1")}
    assert sorted(evals) == [8, 16, 24, 32]
    step = min(evals, key=lambda s: (evals[s], s))
    assert best["selected"] == {"step": step, "criterion": "val/mse/reg_x1",
                                "value": pytest.approx(evals[step], rel=1e-6)}
    with torch.no_grad():  # the loop's model now holds the selected parameters
        test = train.evaluate(loop.model, loop.data.tasks, loop.data.test, 1024)
    assert best["tasks"]["reg_x1"]["mse"] == pytest.approx(test["reg_x1"]["mse"], rel=1e-9)
    # everything reported is the selected model's: its validation (what report_metric reads),
    # and TensorBoard's test/*; the last model's under last / test_last/*
    assert best["val"]["reg_x1"]["mse"] == pytest.approx(evals[step], rel=1e-6)
    assert best["last"]["val"] == last["val"]
    tags = {tag: {e.step: e.value for e in acc.Scalars(tag)}
            for tag in ("test/mse/reg_x1", "test_last/mse/reg_x1")}
    assert tags["test/mse/reg_x1"] == {32: pytest.approx(test["reg_x1"]["mse"], rel=1e-6)}
    assert tags["test_last/mse/reg_x1"] == {32: pytest.approx(last["tasks"]["reg_x1"]["mse"],
                                                              rel=1e-6)}


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_gradient_statistics_are_logged_every_grad_log_every_steps(tmp_path: Path) -> None:
    """Every ``grad_log_every`` steps whatever ``log_every`` is (it was their lcm: 12 here)."""
    run(tmp_path, [*TINY, "trainer.max_steps=20", "strategy=gradnorm_ideal",
                   "trainer.log_every=4", "trainer.grad_log_every=6"])
    assert sorted(scalars(tmp_path / "run", "train/grad_norm/cls_k2")) == [0, 6, 12, 18]
    assert sorted(scalars(tmp_path / "run", "train/grad_cos/cls_k2__cls_k10")) == [0, 6, 12, 18]
    assert sorted(scalars(tmp_path / "run", "train/loss/cls_k2")) == [0, 4, 8, 12, 16]


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_train_lr_at_a_step_is_the_rate_that_step_trained_with(interval: str,
                                                               tmp_path: Path) -> None:
    run(tmp_path, [*TINY, "trainer.max_steps=10", "trainer.log_every=1", "scheduler=exponential",
                   "scheduler.gamma=0.5", f"scheduler.interval={interval}"])
    lr = scalars(tmp_path / "run", "train/lr")
    if interval == "step":
        assert [lr[s] for s in (0, 1, 2)] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    else:  # 8 steps an epoch: steps 0-7 at 1e-3, 8-9 at 5e-4
        assert [lr[s] for s in (0, 7, 8, 9)] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])


def test_float16_gradient_norms_are_logged_without_the_loss_scale(tmp_path: Path) -> None:
    """16-mixed: the logged norms are the strategy's (unscaled), not S times them."""
    args = [*TINY, "trainer.max_steps=1", "strategy=mgda", "trainer.grad_log_every=1"]
    run(tmp_path, args, "fp32")
    run(tmp_path, [*args, "trainer.precision=16-mixed"], "fp16")
    fp32, fp16 = (scalars(tmp_path / name, "train/grad_norm/cls_k2")[0] for name in ("fp32",
                                                                                     "fp16"))
    assert fp16 == pytest.approx(fp32, rel=2e-2)


@pytest.mark.parametrize("strategy", ["gradnorm", "db_mtl", "gradvac"])
def test_one_bad_batch_is_skipped_and_training_goes_on(tmp_path: Path, strategy: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``on_nonfinite=skip_step`` with one NaN target in the training data: exactly the steps
    whose batch holds that row are skipped, and the strategy's state is as it was before each of
    them. (GradNorm's weights and DB-MTL's moving average kept the NaN, so every later step was
    skipped too, and the run ended as diverged.)"""
    from mtlbench.data import build_data

    def with_one_nan(cfg: object, seed: int) -> object:
        data = build_data(cfg, seed)
        data.train.targets["reg_x1"][5] = float("nan")
        return data
    monkeypatch.setattr(train, "build_data", with_one_nan)
    args = [*TINY, "trainer.max_steps=24", "trainer.on_nonfinite=skip_step",
            "trainer.max_skip_fraction=0.5", f"strategy={strategy}"]
    loops: list[train.Loop] = []
    original = train.Loop.train

    def keep(self: train.Loop, *a: object, **k: object) -> dict:
        loops.append(self)
        return original(self, *a, **k)
    monkeypatch.setattr(train.Loop, "train", keep)
    train.run(compose_config(args), tmp_path / "run", strategy)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    holding = sum(bool((train.batch_indices(step, 256, 32, 0) == 5).any()) for step in range(24))
    assert metrics["skipped_steps"] == holding == 3  # once an epoch
    state = loops[0].strategy.state_dict()
    tensors = [t for t in (state.get("w"), *state.get("buffer", []), state.get("gradvac_targets"))
               if isinstance(t, torch.Tensor)]
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors), state


def test_resume_keeps_the_best_so_far_and_the_schedule(tmp_path: Path) -> None:
    args = [*EPOCHS, "trainer.epochs=4", "trainer.eval_every=4", "trainer.checkpoint_every=4",
            "scheduler=exponential", "trainer.select=best_val", "optimizer.lr=0.01"]
    seconds: list[float] = []
    save = checkpoint.save

    def recording_save(*a: object, **k: object) -> Path:  # the time carried by each checkpoint
        seconds.append(k["counters"]["train_seconds"])  # type: ignore[index]
        return save(*a, **k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "save", recording_save)
        full, resumed = killed_and_resumed(args, "equal", tmp_path, at_step=12)
    assert resumed == full
    # the full run checkpoints at 4, 8, …, 32; the killed one at 4, 8, 12; then 16 … 32
    killed_at_12 = seconds[10]
    written = json.loads((tmp_path / "part" / "metrics.json").read_text())["train_seconds"]
    # the resumed run continues the clock: its first checkpoint (step 16) counts the 12 steps before
    assert 0 < killed_at_12 < seconds[11] < seconds[-1] <= written + 1e-3
    assert (json.loads((tmp_path / "part" / "metrics.json").read_text())["selected"]
            == json.loads((tmp_path / "full" / "metrics.json").read_text())["selected"])


def test_selection_criteria() -> None:
    tasks = [TaskSpec("a", "classification", 3), TaskSpec("b", "regression", 1)]
    val = {"a": {"accuracy": 0.8, "loss": 0.5}, "b": {"mse": 2.0, "loss": 2.0}}
    t = OmegaConf.create({"select": "best_val", "select_metric": "mean_accuracy",
                          "select_reference": None})
    assert build_criterion(t, tasks, True).value(val) == -0.8
    t.select_metric = "delta_m"
    t.select_reference = {"a": 0.9, "b": 1.0}  # Δm = ½(−(0.8−0.9)/0.9 + (2−1)/1) · 100
    assert build_criterion(t, tasks, True).value(val) == pytest.approx(
        50 * (0.1 / 0.9 + 1.0), rel=1e-12)
    t.select_metric = "val/accuracy/a"
    c = build_criterion(t, tasks, True)
    assert c.value(val) == -0.8 and c.reported(c.value(val)) == 0.8
    assert c.value({"a": {"accuracy": math.nan}, "b": {}}) == math.inf  # a NaN never wins
    assert build_criterion(OmegaConf.create({"select": "last"}), tasks, True) is None


@pytest.mark.parametrize("overrides, message", [
    ({"select_metric": "val/accuracy/b"}, "`trainer.select_metric` must be mean_accuracy, "
                                          "delta_m, or val/<metric>/<task>"),
    ({"select_metric": "delta_m", "select_reference": {"a": 0.9}},
     "needs `trainer.select_reference.<task>` for b"),
    ({"select": "best"}, "`trainer.select` must be one of last, best_val."),
    ({"has_val": False}, "`trainer.select=best_val` needs a validation split"),
])
def test_selection_errors(overrides: dict, message: str) -> None:
    tasks = [TaskSpec("a", "classification", 3), TaskSpec("b", "regression", 1)]
    has_val = overrides.pop("has_val", True)
    t = OmegaConf.create({"select": "best_val", "select_metric": "mean_accuracy",
                          "select_reference": None, **overrides})
    with pytest.raises(ConfigError) as info:
        build_criterion(t, tasks, has_val)
    assert message in str(info.value)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished run (its dir and its CLI arguments) that every bad re-run below targets."""
    run_dir = tmp_path_factory.mktemp("protocol") / "run"
    base = [*TINY, "trainer.max_steps=4", "trainer.eval_every=2", f"hydra.run.dir={run_dir}"]
    assert run_cli(["train", *base], cwd=run_dir.parent).returncode == 0
    return run_dir, base


BAD_INPUT = [
    (["trainer.epochs=3"], "Set exactly one of `trainer.max_steps` and `trainer.epochs` (both "
                           "are set"),
    (["trainer.max_steps=null"], "(neither is set"),
    (["scheduler=nope"], "`scheduler=nope` is not a known option; accepted: cosine, "
                         "exponential, multistep, none, step."),
    (["trainer.max_steps=16", "scheduler=multistep"],
     "`scheduler.milestones` must be increasing integers inside the run (1 … 1 epochs). Found "
     "`scheduler.milestones = [60, 90]`."),
    (["trainer.max_steps=8", "scheduler=multistep"],  # one epoch (once "1 … 0 epochs")
     "`scheduler.milestones` must lie inside the run, which is 1 epoch(s) long: none fits (set "
     "scheduler.interval=step, or train longer). Found `scheduler.milestones = [60, 90]`."),
    (["scheduler=step", "scheduler.interval=week"],
     "`scheduler.interval` must be one of epoch, step. Found `scheduler.interval = week`."),
    (["trainer.select=best_val", "trainer.select_metric=val/accuracy/nope"],
     "`trainer.select_metric` must be mean_accuracy, delta_m, or val/<metric>/<task>"),
    (["trainer.eval_every=weekly"], "`trainer.eval_every` must be an integer >= 1 or epoch."),
    (["trainer.precision=8"], "`trainer.precision` must be one of 32, bf16-mixed, 16-mixed."),
    (["trainer.gradient_engine=fast"],
     "`trainer.gradient_engine` must be one of auto, loop, batched. Found "
     "`trainer.gradient_engine = fast`."),
    (["trainer.linear_gramian=sometimes"],
     "`trainer.linear_gramian` must be one of auto, direct, kernel."),
]


# two cases in the default suite; every case (each a CLI process) in the slow one
@pytest.mark.parametrize("args, message", [
    pytest.param(*case, marks=pytest.mark.slow) if i > 1 else case
    for i, case in enumerate(BAD_INPUT)])
def test_bad_protocol_input_is_one_line_and_leaves_a_finished_run_alone(
        finished: tuple[Path, list[str]], args: list[str], message: str) -> None:
    run_dir, base = finished
    before = snapshot(run_dir)  # every file but the lock and the appended log
    result = run_cli(["train", *base, *args], cwd=run_dir.parent)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert snapshot(run_dir) == before
