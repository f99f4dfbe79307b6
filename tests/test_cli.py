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
    assert "trainer.select_reference={}" in result.stdout  # (a default_factory field)
    for internal in ("schema", "for_data", "powered by Hydra", "object at 0x"):
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
    # a config group null or a list, numbers beyond float64 in other spellings, empty dirs
    (["strategy=null"], ["`strategy`", "not null"]),
    (["experiment=null"], ["`experiment`", "not null"]),
    (["strategy=[equal,rlw]"], ["`strategy`", "not a list", "-m strategy=a,b"]),
    (["strategy=generalized_mean", "strategy.gamma=1_0e400"], ["strategy.gamma=1_0e400", "inf"]),
    (["strategy=generalized_mean", "strategy.gamma=[1e-400]"], ["strategy.gamma=1e-400", "0"]),
    # keys nothing reads, even when added with + / ++
    (["+trainer.max_step=3"], ["trainer.max_step", "max_steps"]),
    (["++foo=1"], ["`foo`", "trainer"]),
    (["+data.tasks.reg_x1.foo=1"], ["data.tasks.reg_x1.foo", "loss_scale"]),
    (["scheduler=none", "+scheduler.foo=1"], ["scheduler.foo", "interval"]),
    # constructors' own refusals, one line each
    (["optimizer.weight_decay=-1"], ["`optimizer`", "weight_decay", "-1"]),
    (["+optimizer.betas=[0.9,2]"], ["`optimizer`", "beta"]),
    (["strategy._target_=no.such.Thing"], ["strategy._target_", "no.such.Thing"]),
    (["strategy._target_=os.getcwd"], ["strategy._target_", "Strategy", "os.getcwd"]),
    (["model.width=100000000000"], ["`model`", "memory"]),
    # values the code never checked
    (["trainer.num_threads=100000"], ["trainer.num_threads", "100000", "per CPU"]),
    (["strategy=static", "strategy.weights=3"], ["strategy.weights", "map task names"]),
    (["strategy=upgrad", "+strategy.loss_weighting=1"], ["loss_weighting", "not a strategy"]),
    (["strategy=cagrad", "strategy.c=1e300"], ["strategy.c", "at most"]),
    (["scheduler=cosine", "scheduler.eta_min=-1"], ["scheduler.eta_min", ">= 0"]),
    (["data.noise=-1"], ["data.noise", ">= 0"]),
    (["data.tasks.cls_k2.class_skew=nan"], ["data.tasks.cls_k2.class_skew", "finite"]),
    (["data.tasks.reg_x1.target_scale=inf"], ["data.tasks.reg_x1.target_scale", "finite"]),
    (["data=gradnorm_toy", "data.tasks.t0.kind=classification"], ["data.tasks.t0.kind",
                                                                  "regression"]),
    (["data=gradnorm_toy", "data.sigmas=[-1.0,1.0]"], ["data.sigmas", "> 0"]),
    (["trainer.select_reference.cls_k2=0.5"], ["+trainer.select_reference.cls_k2=<value>"]),
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


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_empty_run_or_sweep_dir_is_refused_not_the_current_dir(
        key: str, tmp_path: Path) -> None:
    result = run_cli(["train", "trainer.max_steps=2", f"{key}="], cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"`{key}` is empty" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written where the command ran


def test_a_bug_in_a_single_run_shows_its_traceback_and_is_not_called_a_sweep(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception (a bug, not bad input) keeps Hydra's report with its traceback,
    and is counted once: it once read "all 2 jobs of the sweep failed" for one run."""
    import mtlbench.train

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")
    monkeypatch.setattr(mtlbench.train, "run", broken)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code, out, err = run_in_process(["train", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 1 and "RuntimeError: a bug" in out + err
    assert "jobs of the sweep" not in out + err
    assert json.loads((tmp_path / "run" / "error.json").read_text())["type"] == "RuntimeError"


@pytest.mark.slow  # 4 s of CLI runs
def test_a_failed_attempts_error_and_config_describe_the_same_attempt(tmp_path: Path) -> None:
    """A second rejected attempt in a dir without a result replaces the first one's .hydra/
    along with its error.json, so report never pairs one attempt's error with another's config."""
    run_dir = tmp_path / "run"
    for bad in ("trainer.batch_size=0", "seed=-1"):
        result = run_cli(["train", "trainer.max_steps=2", bad, f"hydra.run.dir={run_dir}"],
                         cwd=tmp_path)
        assert result.returncode == 1
    assert "seed" in json.loads((run_dir / "error.json").read_text())["error"]
    assert (run_dir / ".hydra" / "overrides.yaml").read_text().count("seed=-1") == 1
    assert "batch_size" not in (run_dir / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow  # 4 s of CLI runs
def test_select_reference_is_set_per_task_on_the_command_line(tmp_path: Path) -> None:
    """``+trainer.select_reference.<task>=v`` (documented) works; it once ended in a traceback
    whatever the form. Unset, it is recorded as null, as before (old fingerprints still match)."""
    from omegaconf import OmegaConf

    from mtlbench.rundir import result_config

    refs = {"cls_k2": 0.5, "cls_k10": 0.2, "reg_x1": 1.0, "reg_x100": 1.0}
    run_dir = tmp_path / "run"
    result = run_cli(["train", *FAST, "trainer.select=best_val", "trainer.select_metric=delta_m",
                      *(f"+trainer.select_reference.{t}={v}" for t, v in refs.items()),
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["selected"]["criterion"] == "delta_m"
    assert {t: metrics["config"][f"trainer.select_reference.{t}"] for t in refs} == refs
    from conftest import compose_config

    unset = result_config(OmegaConf.to_container(compose_config([]), resolve=True))
    assert unset["trainer.select_reference"] is None
