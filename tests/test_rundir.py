"""A result is sacred: run-dir ownership, config-checked resume, finished runs left alone, rejected
runs writing nothing — each with real processes where processes are what goes wrong."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, compose_config, job_dirs, run_cli

from mtlbench import checkpoint, rundir
from mtlbench.train import run

#: A run long enough to be caught alive (~10 s on 2 cores), with checkpoints.
LONG = ["trainer.max_steps=4000", "trainer.eval_every=1000", "trainer.checkpoint_every=20",
        "trainer.batch_size=32", "data.n_train=512", "data.n_val=64", "data.n_test=64",
        "trainer.device=cpu", "trainer.num_threads=1"]
SHORT = [*FAST, "trainer.checkpoint_every=3", "trainer.num_threads=1"]


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mtlbench.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run dir but the lock and the log, by relative path."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in (rundir.LOCK_NAME, "cli.log")}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------- 1. ownership
def test_second_process_on_a_live_dir_stops_with_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = start_cli(["train", *LONG, f"hydra.run.dir={run_dir}"], tmp_path)
    try:
        wait_for(lambda: checkpoint.list_checkpoints(run_dir))
        second = run_cli(["train", *LONG, "strategy=geometric", f"hydra.run.dir={run_dir}"],
                         cwd=tmp_path)
        assert first.poll() is None, "the first run ended before the second started"
        lines = error_lines(second.stderr)
        assert second.returncode == 1 and len(lines) == 1, second.stderr
        assert "in use by another mtlbench process" in lines[0]
        assert f"pid {first.pid}" in lines[0]
        assert not (run_dir / "error.json").exists()
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow  # 7 s (a real run SIGKILLed, then re-run)
def test_sigkill_leaves_no_stuck_lock_and_the_rerun_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", *LONG, "trainer.max_steps=300", f"hydra.run.dir={run_dir}"]
    proc = start_cli(args, tmp_path)
    wait_for(lambda: checkpoint.list_checkpoints(run_dir))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / rundir.LOCK_NAME).exists() and not rundir.is_busy(run_dir)
    last = checkpoint.list_checkpoints(run_dir)[-1][0]
    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resumed from checkpoint at step {last}" in resumed.stdout + resumed.stderr


def test_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    with rundir.RunDir(tmp_path), pytest.raises(rundir.RunDirBusy, match=str(os.getpid())):
        rundir.RunDir(tmp_path).acquire()
    rundir.RunDir(tmp_path).acquire()  # released on exit


@pytest.mark.slow  # 6 s (runs started together)
def test_default_dirs_of_runs_started_together_never_collide(tmp_path: Path) -> None:
    procs = [start_cli(["train", *FAST, f"strategy={s}"], tmp_path)
             for s in ("equal", "geometric", "realtime")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    found = sorted((tmp_path / "outputs").rglob("metrics.json"))
    strategies = sorted(json.loads(p.read_text())["strategy"] for p in found)
    assert strategies == ["equal", "geometric", "realtime"]


def test_new_dir_suffixes_an_existing_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(rundir, "_NEW_DIRS", {})
    base = str(tmp_path / "12-00-00")
    assert rundir.new_dir(base) == base
    assert rundir.new_dir(base) == base  # memoized: one process, one dir
    monkeypatch.setattr(rundir, "_NEW_DIRS", {})
    assert rundir.new_dir(base) == base + "_2"


# --------------------------------------------------------------------------- 2. fingerprint
def crashed_run(tmp_path: Path, args: list[str]) -> Path:
    """A run that wrote checkpoints and then died (no metrics.json)."""
    run_dir = tmp_path / "run"
    run(compose_config(args), run_dir, "equal")
    (run_dir / "metrics.json").unlink()
    return run_dir


@pytest.mark.parametrize("change,key", [
    (["strategy=geometric"], "strategy._target_"),
    (["optimizer.lr=0.01"], "optimizer.lr"),
    (["seed=1"], "seed"),
    (["trainer.max_steps=3"], "trainer.max_steps"),
    (["model.width=32"], "model.width"),
])
def test_resume_with_another_config_names_the_keys(change: list[str], key: str,
                                                   tmp_path: Path) -> None:
    run_dir = crashed_run(tmp_path, SHORT)
    before = snapshot(run_dir)
    result = run_cli(["train", *SHORT, *change, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    lines = error_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert f"`{key}` (was" in lines[0] and "corrupt" not in lines[0]
    assert "trainer.resume=fresh" in lines[0] and "hydra.run.dir" in lines[0]
    assert snapshot(run_dir) == before


def test_resume_ignores_keys_that_do_not_change_the_result(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    finished = run(compose_config(SHORT), run_dir, "equal")
    (run_dir / "metrics.json").unlink()  # died after its last checkpoint, before metrics.json
    args = [*SHORT, "trainer.log_every=2", "trainer.num_threads=2", "trainer.progress=off",
            "optimizer.fused=true"]  # (torch's implementation of the same Adam update)
    metrics = run(compose_config(args), run_dir, "equal")
    assert metrics["steps"] == 6 and (run_dir / "metrics.json").exists()
    # the last validation comes with the checkpoint (it once came back empty)
    assert metrics["val"] == finished["val"] and set(metrics["val"]) == {
        "cls_k2", "cls_k10", "reg_x1", "reg_x100"}
    # the crashed run had checkpointed its last step: the resume trained none, only tested
    assert [(s["steps"], s["num_threads"], s["optimizer_implementation"])
            for s in metrics["segments"]] == [([0, 6], 1, "default"), ([6, 6], 2, "fused")]
    assert (metrics["num_threads"], metrics["optimizer_implementation"]) == (1, "default")


@pytest.mark.slow  # 7 s; tests/test_segments.py has the in-process resume
def test_a_run_killed_and_resumed_another_way_is_labelled_by_both_processes(
        tmp_path: Path) -> None:
    args = [*LONG[:-1], "trainer.max_steps=600"]  # (LONG's last: trainer.num_threads=1)
    run_dir = tmp_path / "run"
    proc = start_cli(["train", *args, "trainer.num_threads=1", f"hydra.run.dir={run_dir}"],
                     tmp_path)
    wait_for(lambda: checkpoint.list_checkpoints(run_dir))
    proc.kill()
    proc.communicate()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it was killed"
    last = checkpoint.list_checkpoints(run_dir)[-1][0]
    resumed = run_cli(["train", *args, "trainer.num_threads=2", "optimizer.fused=true",
                       f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [(s["steps"], s["device"], s["num_threads"], s["optimizer_implementation"])
            for s in metrics["segments"]] == [([0, last], "cpu", 1, "default"),
                                              ([last, 600], "cpu", 2, "fused")]
    assert (metrics["device"], metrics["num_threads"], metrics["optimizer_implementation"]) == (
        "cpu", None, None)
    assert metrics["train_seconds"] == pytest.approx(
        sum(s["seconds"] for s in metrics["segments"]), abs=0.01)


def test_checkpoint_without_fingerprint_is_not_called_corrupt(tmp_path: Path) -> None:
    run_dir = crashed_run(tmp_path, SHORT)
    _, path = checkpoint.list_checkpoints(run_dir)[-1]
    state = checkpoint.load(path)
    del state["config"]
    import torch

    torch.save(state, path)
    with pytest.raises(rundir.ConfigMismatch, match="without a config fingerprint"):
        run(compose_config(SHORT), run_dir, "equal")


# --------------------------------------------------------------------------- 3. finished runs
def test_rerunning_a_finished_run_reports_it_done_and_touches_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", *SHORT, "trainer.report_metric=val/accuracy/cls_k2",
            f"hydra.run.dir={run_dir}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    before = snapshot(run_dir)
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already holds the finished run of this configuration" in again.stderr + again.stdout
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("more", [
    [],  # the same command; keys that do not change the result are not in job dir names:
    pytest.param(["trainer.checkpoint_every=2", "optimizer.foreach=false"],
                 marks=pytest.mark.slow)])
def test_sweep_rerun_into_the_same_dir_keeps_finished_jobs(more: list[str],
                                                           tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "strategy=equal,realtime", *SHORT, f"hydra.sweep.dir={sweep}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    before = {p.name: snapshot(p) for p in job_dirs(sweep)}
    again = run_cli([*args, *more], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 finished, 0 failed, 0 unfinished" in again.stdout + again.stderr
    assert {p.name: snapshot(p) for p in job_dirs(sweep)} == before


def test_fresh_replaces_a_finished_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(compose_config(SHORT), run_dir, "equal")
    metrics = run(compose_config([*SHORT, "optimizer.lr=0.01", "trainer.resume=fresh"]), run_dir,
                  "equal")
    assert metrics["config"]["optimizer.lr"] == 0.01
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


# --------------------------------------------------------------------------- 4. rejected runs
@pytest.mark.parametrize("bad", [["optimizer.lr=0"],  # (the others: 6 s each, in the slow suite)
                                 pytest.param(["strategy=geometric"], marks=pytest.mark.slow),
                                 pytest.param(["data.only=nope"], marks=pytest.mark.slow)])
def test_a_rejected_rerun_leaves_a_finished_run_as_it_was(bad: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run_cli(["train", *SHORT, f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 0
    before = snapshot(run_dir)
    result = run_cli(["train", *SHORT, *bad, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 1 and len(error_lines(result.stderr)) == 1, result.stderr
    assert snapshot(run_dir) == before  # .hydra/, metrics.json, events; no error.json
    from mtlbench.report import read_run

    assert read_run(run_dir).status == "finished"


def test_a_failed_run_records_the_error_in_error_json_and_cli_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(["train", *SHORT, "data.only=nope", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 1
    assert json.loads((run_dir / "error.json").read_text())["type"] == "ConfigError"
    assert "data.only" in (run_dir / "cli.log").read_text()


def test_restart_without_checkpoint_does_not_duplicate_tensorboard_history(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(compose_config(FAST), run_dir, "equal")
    (run_dir / "metrics.json").unlink()  # died after its events, before any checkpoint
    again = run_cli(["train", *FAST, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Starting over" in again.stderr + again.stdout
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


# --------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow  # 14 s; the in-process Ctrl-C tests below are in the default suite
def test_ctrl_c_checkpoints_says_how_to_resume_and_the_resume_is_exact(tmp_path: Path) -> None:
    # long enough that the Ctrl-C 0.3 s after the first event lands inside the loop (400 steps of
    # this tiny model once finished in less, and the interrupt then came during the final test)
    args = [*LONG, "trainer.max_steps=2000", "trainer.checkpoint_every=0"]
    reference = tmp_path / "reference"
    assert run_cli(["train", *args, f"hydra.run.dir={reference}"], cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "run"
    proc = start_cli(["train", *args, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for(lambda: list(run_dir.glob("events.out.tfevents.*")))
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in error_lines(err) if line.startswith("mtlbench:")]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert "checkpoint saved as" in lines[0] and f"hydra.run.dir={run_dir}" in lines[0]
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "error.json").exists()
    resumed = run_cli(["train", *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0 and "Resumed from checkpoint" in resumed.stderr + resumed.stdout
    tasks = [json.loads((d / "metrics.json").read_text())["tasks"] for d in (reference, run_dir)]
    assert tasks[0] == tasks[1]


def test_a_sweep_leaves_no_stray_default_dirs(tmp_path: Path) -> None:
    """Hydra re-composes each job's config: a default dir that is created when resolved would be
    created again per job (it was, with presets that set hydra.sweep.dir)."""
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", "experiment=strategy_comparison",
                      "hydra.sweeper.params.strategy=equal", "hydra.sweeper.params.seed='0,1'",
                      *FAST, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(sweep.rglob("metrics.json"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_sweep_dir_names_leave_out_what_the_fingerprint_leaves_out() -> None:
    """A sweep re-run with a key changed that does not change the result (``trainer.
    checkpoint_every``, ``optimizer.foreach``, ...) finds its jobs' dirs: finished jobs are left
    alone and killed ones resume, instead of starting over in new dirs."""
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "conf" / "config.yaml").read_text())
    excluded = config["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    assert sorted(excluded) == sorted(["experiment", *rundir.NOT_RESULT_AFFECTING])


def ctrl_c_at_step(patch: pytest.MonkeyPatch, at: int) -> None:
    """Send this process a SIGINT during training step ``at`` (of every run)."""
    from mtlbench import train

    step = train.train_step
    count = {"n": 0}

    def stepping(*args: object, **kwargs: object) -> object:
        if count["n"] == at:
            signal.raise_signal(signal.SIGINT)
        count["n"] += 1
        return step(*args, **kwargs)
    patch.setattr(train, "train_step", stepping)


def test_a_ctrl_c_during_the_last_step_finishes_the_run_and_stops(tmp_path: Path) -> None:
    """It was dropped: the run finished and a sweep went on to its next job."""
    from mtlbench.train import Interrupted

    whole = run(compose_config(SHORT), tmp_path / "whole", "equal")
    with pytest.MonkeyPatch.context() as patch:
        ctrl_c_at_step(patch, 5)  # SHORT trains 6 steps
        with pytest.raises(Interrupted, match="during the last step; the run finished"):
            run(compose_config(SHORT), tmp_path / "run", "equal")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["tasks"] == whole["tasks"]


def test_a_ctrl_c_in_a_sweep_stops_it_and_says_how_to_resume_the_sweep(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mtlbench.cli import main

    sweep = tmp_path / "sweep"
    with pytest.MonkeyPatch.context() as patch:
        ctrl_c_at_step(patch, 2)
        with pytest.raises(SystemExit) as stopped:
            main(["train", "-m", "seed=0,1", *SHORT, f"hydra.sweep.dir={sweep}"])
    err = capsys.readouterr().err
    assert stopped.value.code == 130
    assert f"To resume, run the same sweep command with hydra.sweep.dir={sweep}" in err
    assert "hydra.run.dir" not in err
    assert [p.name.split("_")[0] for p in job_dirs(sweep)] == ["0"]  # no job 1


def test_the_resume_advice_quotes_a_path_hydra_would_misread(tmp_path: Path) -> None:
    """A sweep job's dir has ``=`` and ``,``: the advice must parse (and point at it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mtlbench.train import override_text

    path = tmp_path / "0_seed=0,trainer.max_steps=6"
    [arg] = shlex.split(override_text("hydra.run.dir", path))  # as a shell passes it on
    assert OverridesParser.create().parse_overrides([arg])[0].value() == str(path)

