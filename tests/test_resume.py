"""Checkpoints, kill -9 resume, determinism, and divergence handling."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config, killed_and_resumed, run_cli

from mtlbench import checkpoint, files
from mtlbench.errors import TrainingDiverged
from mtlbench.train import run

RESUME = ["trainer.max_steps=400", "trainer.eval_every=100", "trainer.checkpoint_every=25",
          "trainer.batch_size=32", "data.n_train=512", "data.n_val=64", "data.n_test=256",
          "trainer.device=cpu", "trainer.num_threads=1"]


def task_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["tasks"]


def test_same_seed_same_metrics_different_seed_differs(tmp_path: Path) -> None:
    small = ["trainer.max_steps=20", "trainer.eval_every=10", "data.n_train=256",
             "data.n_val=64", "data.n_test=64", "trainer.device=cpu", "strategy=realtime"]
    a = run(compose_config(small), tmp_path / "a", "realtime")["tasks"]
    b = run(compose_config(small), tmp_path / "b", "realtime")["tasks"]
    c = run(compose_config([*small, "seed=1"]), tmp_path / "c", "realtime")["tasks"]
    assert a == b
    assert a != c


def test_resume_in_process_matches_uninterrupted(tmp_path: Path) -> None:
    args = [*RESUME, "trainer.max_steps=60", "strategy=init_loss"]
    full, resumed = killed_and_resumed(args, "init_loss", tmp_path, at_step=50)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "part")] == [25, 50]
    assert resumed == full


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = run_cli(["train", *RESUME, "strategy=realtime", f"hydra.run.dir={reference}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "mtlbench.cli", "train", *RESUME, "strategy=realtime",
           f"hydra.run.dir={crashed}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoint.list_checkpoints(crashed) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05 * torch.rand(1).item())  # a random moment after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (crashed / "metrics.json").exists(), "the run finished before it was killed"
    last = checkpoint.list_checkpoints(crashed)[-1][0]

    resumed = run_cli(["train", *RESUME, "strategy=realtime", f"hydra.run.dir={crashed}"],
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resumed from checkpoint at step {last}" in resumed.stdout + resumed.stderr
    assert task_metrics(crashed) == task_metrics(reference)


def test_keep_last_k_checkpoints(tmp_path: Path) -> None:
    args = [*RESUME, "trainer.max_steps=100", "trainer.keep_checkpoints=2"]
    run(compose_config(args), tmp_path, "equal")
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [75, 100]


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    run(compose_config([*RESUME, "trainer.max_steps=25", "strategy=init_loss"]), tmp_path,
        "init_loss")
    _, path = checkpoint.list_checkpoints(tmp_path)[-1]
    state = torch.load(path, weights_only=True)
    assert state["step"] == 25 and set(state) >= {"model", "optimizer", "strategy", "rng"}
    assert state["strategy"]["reference"].shape == (4,)


def test_corrupt_checkpoint_is_refused_then_fresh_start_on_request(tmp_path: Path) -> None:
    args = [*RESUME, "trainer.max_steps=50"]
    run(compose_config(args), tmp_path, "equal")
    (tmp_path / "metrics.json").unlink()  # as if it died after its last checkpoint
    _, newest = checkpoint.list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    with pytest.raises(checkpoint.CheckpointError, match="corrupt.*refusing to resume"):
        run(compose_config(args), tmp_path, "equal")
    assert not (tmp_path / "metrics.json").exists()
    run(compose_config([*args, "trainer.resume=fresh"]), tmp_path, "equal")
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [25, 50]


def test_corrupt_checkpoint_cli_message(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000010.pt").write_bytes(b"garbage")
    result = run_cli(["train", *RESUME, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1
    assert lines == [lines[0]] and "step_00000010.pt is corrupt" in lines[0], result.stderr


KILL_DURING_WRITE = """
import sys, torch
from pathlib import Path
from mtlbench import checkpoint, files, train
model = torch.nn.Linear(2048, 2048)  # 16 MiB per checkpoint: writes take a while
opt = torch.optim.SGD(model.parameters(), lr=0.1)
class S:
    def state_dict(self): return {}
print("ready", flush=True)
step = 0
while True:
    step += 1
    with torch.no_grad():
        model.weight.fill_(step)
    checkpoint.save(Path(sys.argv[1]), step, model, opt, None, S(), keep=2)
"""


def test_kill_during_checkpoint_write_keeps_previous_loadable(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while len(checkpoint.list_checkpoints(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # kill while a temp file is being written (most of the loop's time is spent writing)
    while not list((tmp_path / "checkpoints").glob(".*tmp*")) and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step, path = checkpoint.list_checkpoints(tmp_path)[-1]
    state = torch.load(path, weights_only=True)
    assert state["step"] == step
    assert torch.all(state["model"]["weight"] == step)


def test_atomic_write_leaves_old_file_when_rename_never_happens(tmp_path: Path,
                                                                  monkeypatch) -> None:
    target = tmp_path / "metrics.json"
    files.atomic_write_bytes(target, b"old")

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("killed before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"


def test_divergence_stops_with_step_task_and_strategy(tmp_path: Path) -> None:
    args = [*RESUME, "trainer.max_steps=30", "optimizer.lr=1e30",
            "data.tasks.reg_x100.loss_scale=1e30"]
    with pytest.raises(TrainingDiverged, match=r"at step \d+ \(strategy equal\).*reg_x100.*"
                                               r"No checkpoint was written yet"):
        run(compose_config(args), tmp_path, "equal")
    assert not (tmp_path / "metrics.json").exists()
    no_checkpoints = [*args, "trainer.checkpoint_every=0"]
    with pytest.raises(TrainingDiverged, match=r"No checkpoint .*checkpoint_every=0"):
        run(compose_config(no_checkpoints), tmp_path / "none", "equal")


def test_skip_step_counts_skips_and_finishes(tmp_path: Path) -> None:
    args = [*RESUME, "trainer.max_steps=30", "optimizer.lr=1e30",
            "data.tasks.reg_x100.loss_scale=1e30", "trainer.on_nonfinite=skip_step",
            "trainer.max_skip_fraction=0.99"]
    metrics = run(compose_config(args), tmp_path, "equal")
    assert metrics["skipped_steps"] > 0
    text = (tmp_path / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))


def test_skip_step_stops_once_too_many_steps_were_skipped(tmp_path: Path) -> None:
    args = [*RESUME, "trainer.max_steps=30", "optimizer.lr=1e30",
            "data.tasks.reg_x100.loss_scale=1e30", "trainer.on_nonfinite=skip_step"]
    with pytest.raises(TrainingDiverged, match=r"4 non-finite steps skipped .* "
                                               r"trainer.max_skip_fraction=0.1 of the 30"):
        run(compose_config(args), tmp_path, "equal")
    assert not (tmp_path / "metrics.json").exists()


def test_non_finite_final_metrics_are_null_and_flagged(tmp_path: Path) -> None:
    from mtlbench.train import strict_json

    clean, bad = strict_json({"tasks": {"a": {"mse": math.inf, "loss": 1.0}}, "x": math.nan})
    assert clean == {"tasks": {"a": {"mse": None, "loss": 1.0}}, "x": None}
    assert bad == ["tasks.a.mse", "x"]
    with pytest.raises(ValueError):
        files.write_json_atomic(tmp_path / "m.json", {"v": math.inf})


def test_skipped_step_count_survives_a_resume(tmp_path: Path) -> None:
    args = [*RESUME, "optimizer.lr=1e30", "data.tasks.reg_x100.loss_scale=1e30",
            "trainer.on_nonfinite=skip_step", "trainer.max_skip_fraction=0.99",
            "trainer.max_steps=50"]
    killed_and_resumed(args, "equal", tmp_path, at_step=25)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert resumed["skipped_steps"] == full["skipped_steps"] > 25


def test_all_finite_finds_one_bad_entry_and_never_flags_large_finite_ones() -> None:
    from mtlbench.train import all_finite

    big = torch.full((1000, 100), 3.0e38)  # float32's largest values: a float32 sum would overflow
    assert all_finite([torch.ones(3), big, -big])
    for bad in (math.nan, math.inf, -math.inf):
        g = torch.zeros(500, 300)
        g[123, 45] = bad
        assert not all_finite([torch.ones(3), g])
    both = torch.tensor([math.inf, -math.inf])  # they cancel to nan, still non-finite
    assert not all_finite([both])
    assert not all_finite([torch.tensor([1.0, math.nan]), torch.ones(2)])  # a loss or a weight
