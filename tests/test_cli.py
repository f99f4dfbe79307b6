"""The `mtlbench` CLI: help, one end-to-end run per strategy, a multirun, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FAST, REPO, run_cli

from mtlbench.cli import main

STRATEGIES = sorted(p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml"))
#: The post's strategies (and the default) run through the real CLI in the default suite; every
#: other one trains in-process in its own test file, and through the CLI in the slow suite.
POST = {"equal", "static", "init_loss", "prior_loss", "realtime", "geometric", "generalized_mean",
        "gradnorm_ideal", "single_task"}
CLI_STRATEGIES = [s if s in POST else pytest.param(s, marks=pytest.mark.slow) for s in STRATEGIES]
#: Extra overrides a strategy needs to run at all (single-task runs one task): it runs alone.
NEEDS = {"single_task": ["data.only=cls_k10"]}


def run_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``mtlbench <args>`` in this process; returns (exit code, stdout, stderr)."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_in_process(["--help"], capsys)
    assert code == 0 and "train" in out and "report" in out


def test_unknown_subcommand_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_in_process(["trian"], capsys)
    expected = "mtlbench: unknown command `trian`; accepted: train, report."
    assert code == 2 and err.strip() == expected


def test_train_help_lists_the_groups_and_no_internals(tmp_path: Path) -> None:
    result = run_cli(["train", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("data:", "model:", "strategy:", "optimizer:", "experiment:", "hydra/launcher:"):
        assert group in result.stdout
    assert "generalized_mean" in result.stdout and "gradnorm_toy" in result.stdout
    assert "trainer.max_steps=1000" in result.stdout  # the root config's default, not the schema's
    for internal in ("schema", "for_data", "powered by Hydra"):
        assert internal not in result.stdout


def test_help_and_report_do_not_import_torch(tmp_path: Path) -> None:
    code = ("import sys; from mtlbench.cli import main\n"
            "for args in (['--help'], ['train', '--help'], ['report', '--help']):\n"
            "    try: main(args)\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_run_dir_that_is_a_file_or_not_writable_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("keep")
    for where in (tmp_path / "afile", tmp_path / "afile" / "run", Path("/sys/mtlbench/run")):
        result = run_cli(["train", *FAST, f"hydra.run.dir={where}"], cwd=tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith("mtlbench: error: cannot write") and "hydra.run.dir" in lines[0]
    assert (tmp_path / "afile").read_text() == "keep"


def test_huge_seed_trains(tmp_path: Path) -> None:
    from mtlbench.train import batch_indices

    assert len(batch_indices(3, 100, 10, 2**63 - 1)) == 10
    result = run_cli(["train", *FAST, "seed=20000000000000", f"hydra.run.dir={tmp_path / 'r'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


Sweep = tuple[subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def strategy_sweep(tmp_path_factory: pytest.TempPathFactory) -> Callable[[bool], Sweep]:
    """``sweep(slow)``: one real ``mtlbench train -m strategy=a,b,...`` process over the post's
    strategies (``slow=False``) or every other one (``slow=True``), run once per module; returns the
    finished process and its working directory (the sweep dir is ``<it>/sweep``). One process
    for the group, not one per strategy: each would spend ~2.5 s importing torch."""
    done: dict[bool, Sweep] = {}

    def sweep(slow: bool) -> Sweep:
        if slow not in done:
            names = [s for s in STRATEGIES if s not in NEEDS and (s not in POST) == slow]
            where = tmp_path_factory.mktemp("slow" if slow else "post")
            result = run_cli(["train", "-m", "strategy=" + ",".join(names), *FAST,
                              f"hydra.sweep.dir={where / 'sweep'}"], cwd=where, timeout=900)
            done[slow] = (result, where)
        return done[slow]
    return sweep


def job_dir(sweep: Sweep, strategy: str) -> Path:
    """The job dir of ``strategy`` in a multirun (named ``<job>_<overrides, comma-separated>``)."""
    result, where = sweep
    found = [d for d in (where / "sweep").iterdir()
             if d.is_dir() and f"strategy={strategy}" in d.name.split("_", 1)[-1].split(",")]
    assert len(found) == 1, f"{strategy}: job dirs {found}; stderr: {result.stderr[-2000:]}"
    return found[0]


@pytest.mark.parametrize("strategy", CLI_STRATEGIES)
def test_each_strategy_trains_end_to_end(strategy: str, tmp_path: Path,
                                         strategy_sweep: Callable[[bool], Sweep]) -> None:
    if strategy in NEEDS:
        run_dir, where = tmp_path / "run", tmp_path
        result = run_cli(["train", f"strategy={strategy}", *NEEDS[strategy], *FAST,
                          f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        log = result.stdout + result.stderr
    else:
        result, where = sweep = strategy_sweep(strategy not in POST)
        run_dir = job_dir(sweep, strategy)
        error = run_dir / "error.json"
        assert not error.exists(), error.read_text()[-2000:]
        log = (run_dir / "cli.log").read_text()
    assert (run_dir / "metrics.json").exists(), result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["strategy"] == strategy and metrics["steps"] == 6 and metrics["seed"] == 0
    for name, task in metrics["tasks"].items():
        metric = "accuracy" if task["kind"] == "classification" else "mse"
        assert set(task) >= {"kind", "loss", metric}, name
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert f"Final test metrics ({strategy}, seed 0)" in log
    assert not (where / "outputs").exists()


def test_two_job_multirun_writes_one_dir_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", "strategy=generalized_mean", "strategy.gamma=0,inf", *FAST,
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    found = sorted(sweep.rglob("metrics.json"))
    assert len(found) == 2
    gammas = [p.parent.name for p in found]
    assert any("strategy.gamma=0" in g for g in gammas)
    assert any("strategy.gamma=inf" in g for g in gammas)


# --------------------------------------------------------------------------- bad input
BAD_INPUT = [
    # (overrides, words the single error line must contain)
    (["strategy=bogus"], ["strategy=bogus", "equal", "generalized_mean"]),
    (["data=bogus"], ["data=bogus", "synthetic"]),
    (["model=bogus"], ["model=bogus", "mlp"]),
    (["trainer.max_steps=abc"], ["trainer.max_steps", "abc"]),
    (["strategy=generalized_mean", "strategy.gamma=nan"], ["gamma", "nan", "±inf"]),
    (["optimizer.lr=0"], ["optimizer.lr", "> 0"]),
    (["optimizer.lr=-1"], ["optimizer.lr", "-1"]),
    (["optimizer.lr=inf"], ["optimizer.lr", "inf"]),
    (["trainer.max_steps=0"], ["trainer.max_steps", ">= 1"]),
    (["trainer.batch_size=-4"], ["trainer.batch_size", "-4"]),
    (["data.tasks.reg_x1.loss_scale=0"], ["data.tasks.reg_x1.loss_scale", "> 0"]),
    (["data.tasks.reg_x1.loss_scale=nan"], ["data.tasks.reg_x1.loss_scale", "Found `nan`"]),
    (["strategy=static", "+strategy.weights.cls_k2=-1"], ["strategy.weights.cls_k2", ">= 0"]),
    (["strategy=static", "+strategy.weights.cls_k2=0", "+strategy.weights.cls_k10=0",
      "+strategy.weights.reg_x1=0", "+strategy.weights.reg_x100=0"], ["strategy.weights", "> 0"]),
    (["strategy=static", "+strategy.weights.nope=1"], ["strategy.weights.nope", "cls_k2"]),
    (["data.tasks.cls_k2.num_classes=1"], ["data.tasks.cls_k2.num_classes", ">= 2"]),
    (["data.only=nope"], ["data.only", "nope", "cls_k10"]),
    (["foo=1"], ["foo"]),
    (["trainer.device=tpu"], ["trainer.device", "tpu", "cuda"]),
    (["trainer.device=cuda:9"], ["trainer.device=cuda:9", "not available", "accepted here"]),
    (["trainer.device=mps"], ["trainer.device=mps", "not available", "cpu"]),
    (["seed=100000000000000000000"], ["seed", "2**63 - 1", "100000000000000000000"]),
    (["seed=-1"], ["seed", "-1"]),
    (["strategy=generalized_mean", "strategy.gamma=1e400"], ["strategy.gamma=1e400", "inf"]),
    (["optimizer.lr=1e-400"], ["optimizer.lr=1e-400", "0"]),
    (["optimizer.foreach=true", "optimizer.fused=true"],
     ["optimizer.foreach", "optimizer.fused", "false or null"]),
    (["trainer.max_skip_fraction=1"], ["trainer.max_skip_fraction", "[0, 1)"]),
    (["hydra/launcher=nope"], ["hydra/launcher=nope", "local_parallel", "mtlbench[sweeps]"]),
    (["+strategy.foo=1"], ["strategy.foo", "not a parameter"]),
    (
        ["trainer.report_metric=val/accuracy/nope"],
        ["trainer.report_metric", "val/accuracy/cls_k10"],
    ),
]
if (REPO / "conf" / "strategy" / "gradnorm.yaml").exists():
    BAD_INPUT.append((["strategy=gradnorm", "strategy.alpha=-1"], ["alpha", "-1"]))


@pytest.mark.parametrize("overrides,words", BAD_INPUT, ids=lambda v: " ".join(v)[:60])
def test_bad_input_is_one_line_and_overwrites_nothing(
    overrides: list[str], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    sentinel_metrics, sentinel_ckpt = b'{"sentinel": true}\n', b"not touched"
    (run_dir / "metrics.json").write_bytes(sentinel_metrics)
    (run_dir / "checkpoints" / "keep.bin").write_bytes(sentinel_ckpt)
    args = ["train", "trainer.max_steps=3", "trainer.device=cpu", *overrides]
    code, _, err = run_in_process([*args, f"hydra.run.dir={run_dir}"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, err
    assert lines[0].startswith("mtlbench: error: "), lines[0]
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert (run_dir / "metrics.json").read_bytes() == sentinel_metrics
    assert (run_dir / "checkpoints" / "keep.bin").read_bytes() == sentinel_ckpt
    assert not list(run_dir.glob("events.out.tfevents.*"))


def test_report_metric_of_a_metrics_json_without_it_is_nan_not_a_crash() -> None:
    """A metrics.json of an older mtlbench could hold ``"val": {}`` (a resume at the last step):
    a re-run with ``trainer.report_metric`` returns nan (not recorded), not a KeyError."""
    from mtlbench.cli import metric_value

    metrics = {"val": {}, "tasks": {"cls_k2": {"accuracy": 0.75}}}
    assert math.isnan(metric_value(metrics, "val/accuracy/cls_k2"))
    assert metric_value(metrics, "test/accuracy/cls_k2") == 0.75
    assert metric_value({"val": {"cls_k2": {"accuracy": 0.5}}}, "val/accuracy/cls_k2") == 0.5
