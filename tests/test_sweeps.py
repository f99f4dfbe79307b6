"""Multiruns: job directories, launchers (basic, joblib, submitit_local), failed jobs, presets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from conftest import FAST, REPO, job_dirs, run_cli
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from mtlbench.config import register_configs

#: Strategies another engineer is adding concurrently (conf/strategy/<name>.yaml).
PENDING_STRATEGIES = {"gradnorm_ideal", "gradnorm", "db_mtl"}


def experiment_key() -> str:
    """``experiment`` once the root defaults list has an experiment slot, else ``+experiment``."""
    defaults = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["defaults"]
    has_slot = any(isinstance(d, dict) and any(k.endswith("experiment") for k in d)
                   for d in defaults)
    return "experiment" if has_slot else "+experiment"


def compose_hydra(overrides: list[str]) -> DictConfig:
    """The full config (hydra.* included) of a multirun with ``overrides``."""
    register_configs()
    with initialize_config_module(config_module="mtlbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_basic_launcher_one_named_dir_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "strategy=equal,realtime", *FAST, f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = job_dirs(sweep)
    assert [p.name.split(",")[0] for p in jobs] == ["0_data.n_test=64", "1_data.n_test=64"]
    assert ["strategy=equal" in jobs[0].name, "strategy=realtime" in jobs[1].name] == [True, True]
    assert all("trainer.device" not in p.name for p in jobs)  # excluded noisy key
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["steps"] == 6
        assert list(job.glob("events.out.tfevents.*"))
    assert "2 finished, 0 failed, 0 unfinished" in proc.stdout + proc.stderr


def test_jobs_differing_only_in_excluded_keys_get_their_own_dirs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "trainer.num_threads=1,2", *FAST, f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = job_dirs(sweep)
    assert len(jobs) == 2 and jobs[0].name.split("_", 1)[1] == jobs[1].name.split("_", 1)[1]
    assert all((job / "metrics.json").is_file() for job in jobs)


def test_user_error_in_one_job_does_not_stop_the_others(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "strategy=single_task,equal", *FAST,
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output  # the sweep went on, and its exit status says it failed
    assert output.rstrip().splitlines()[-1].startswith("[") and "Traceback" not in output
    failed, finished = job_dirs(sweep)
    assert json.loads((failed / "error.json").read_text())["type"] == "ConfigError"
    assert (finished / "metrics.json").is_file()
    assert "1 finished, 1 failed, 0 unfinished" in proc.stdout + proc.stderr


def test_unexpected_exception_is_recorded_and_the_batch_completes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # (the base class: a Strategy whose weights() is not implemented, so the step raises)
    proc = run_cli(["train", "-m", "strategy._target_=mtlbench.strategies.base.Strategy,"
                    "mtlbench.strategies.equal.Equal", *FAST, f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path)
    # no traceback on the console: the summary comes last and the exit status is 1
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output
    assert "1 finished, 1 failed, 0 unfinished" in output.rstrip().splitlines()[-2]
    failed, finished = job_dirs(sweep)
    assert "base.Strategy" in failed.name
    error = json.loads((failed / "error.json").read_text())
    assert error["type"] == "NotImplementedError"
    assert "Traceback" in error["traceback"] and "in weights" in error["traceback"]
    assert (finished / "metrics.json").is_file()


@pytest.mark.slow  # 6 s (two joblib worker processes)
def test_joblib_launcher_runs_two_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1", *FAST, "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", "trainer.num_threads=1",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seeds = sorted(json.loads((j / "metrics.json").read_text())["seed"] for j in job_dirs(sweep))
    assert seeds == [0, 1]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_submitit_local_keeps_its_folder_inside_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1", *FAST, "hydra/launcher=submitit_local",
                    "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all((j / "metrics.json").is_file() for j in job_dirs(sweep))
    assert (sweep / ".submitit").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_slurm_preset_puts_submitit_folder_in_the_sweep_dir() -> None:
    cfg = compose_hydra(["hydra/launcher=slurm", "hydra.sweep.dir=/x/sweep"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert OmegaConf.select(cfg, "hydra.launcher.submitit_folder") == "/x/sweep/.submitit/%j"
    assert launcher.gres is None and launcher.array_parallelism > 0


def test_gamma_sweep_preset() -> None:
    cfg = compose_hydra([f"{experiment_key()}=gamma_sweep"])
    params = cfg.hydra.sweeper.params
    assert cfg.strategy._target_.endswith("GeneralizedMean")
    assert str(params["strategy.gamma"]).split(",") == \
        ["-inf", "-2", "-1", "-0.5", "0", "0.5", "1", "2", "inf"]
    assert str(params.seed) == "0,1,2"


def test_comparison_presets_cover_strategies_and_one_baseline_per_task() -> None:
    existing = {p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml")}
    for preset in ("strategy_comparison", "invariance_audit"):
        cfg = compose_hydra([f"{experiment_key()}={preset}"])
        listed = set(str(cfg.hydra.sweeper.params.strategy).split(","))
        assert listed - existing <= PENDING_STRATEGIES, preset
        assert {"equal", "realtime", "geometric", "init_loss", "prior_loss"} <= listed
    cfg = compose_hydra([f"{experiment_key()}=strategy_comparison"])
    listed = set(str(cfg.hydra.sweeper.params.strategy).replace(" ", "").split(","))
    assert listed == existing - {"static", "generalized_mean", "single_task"}
    stl = compose_hydra([f"{experiment_key()}=strategy_comparison_stl"])
    assert stl.strategy._target_.endswith("SingleTask")
    assert set(str(stl.hydra.sweeper.params["data.only"]).split(",")) == set(stl.data.tasks)
    mtl = compose_hydra([f"{experiment_key()}=strategy_comparison"])
    assert Path(stl.hydra.sweep.dir).parent == Path(mtl.hydra.sweep.dir).parent


def test_optuna_preset() -> None:
    cfg = compose_hydra([f"{experiment_key()}=optuna_gamma"])
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_ and sweeper.direction == "maximize"
    assert cfg.trainer.report_metric == "val/accuracy/cls_k10"
    assert "strategy.gamma" in sweeper.params and sweeper.max_failure_rate == 1.0


@pytest.mark.slow
def test_optuna_study_survives_a_failing_trial(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", f"{experiment_key()}=optuna_gamma", *FAST,
                    "hydra.sweeper.n_trials=3", "strategy.gamma=choice(nan,1.0)",
                    "hydra.sweeper.sampler.seed=0", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output  # the study finished, and says a trial failed
    assert "Failed experiment: ConfigError" in output and "Traceback" not in output
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["strategy.gamma"] == 1.0
    statuses = sorted((j / "error.json").is_file() for j in job_dirs(sweep))
    assert statuses[0] is False and statuses[-1] is True


@pytest.mark.slow
def test_optuna_study_whose_trials_all_fail_is_one_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", f"{experiment_key()}=optuna_gamma", *FAST,
                    "hydra.sweeper.n_trials=2", "strategy.gamma=choice(nan)",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mtlbench:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert lines == ["mtlbench: error: all 2 jobs of the sweep failed; each job's error.json "
                     "says why."]
    assert all((j / "error.json").is_file() for j in job_dirs(sweep))


# ----------------------------------------------------------------------------- the sweep's ledger
@pytest.mark.slow  # 8 s (two CLI sweeps); the ledger's summary in-process below
def test_a_job_refused_by_another_configs_result_counts_as_failed(tmp_path: Path) -> None:
    """The dir holds a finished run of another configuration (as two presets sharing a sweep dir
    make): the job is refused and writes nothing there; the sweep says so and exits 1 (it once
    recounted that dir's metrics.json as this job's success)."""
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "seed=0", *FAST, f"hydra.sweep.dir={sweep}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    [job] = job_dirs(sweep)
    metrics = json.loads((job / "metrics.json").read_text())
    metrics["config"]["optimizer.lr"] = 0.5  # another configuration's finished run
    (job / "metrics.json").write_text(json.dumps(metrics))
    again = run_cli(args, cwd=tmp_path)
    output = again.stdout + again.stderr
    assert again.returncode == 1, output
    assert "0 finished, 1 failed, 0 unfinished" in output
    assert "ConfigMismatch" in output and "optimizer.lr" in output


@pytest.mark.slow  # 8 s (two CLI sweeps); the ledger's summary in-process below
def test_the_summary_counts_this_sweeps_jobs_not_the_dirs_earlier_ones(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    first = run_cli(["train", "-m", "strategy=single_task,equal", *FAST,
                     f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert first.returncode == 1  # single_task without data.only: one job failed
    second = run_cli(["train", "-m", "strategy=realtime", *FAST, f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "1 finished, 0 failed, 0 unfinished" in output
    kept = sorted((sweep / ".mtlbench").glob("*/multirun.yaml"))  # Hydra's own is the second's
    assert [OmegaConf.load(p).hydra.overrides.task[0] for p in kept] == [
        "strategy=single_task,equal", "strategy=realtime"]


def test_each_sweep_keeps_its_own_config(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra's ``multirun.yaml`` is overwritten by the next sweep into the same dir; each sweep's
    is also kept in its ledger folder, which no later sweep writes."""
    from mtlbench import ledger
    from mtlbench.callbacks import JobStatusReport

    monkeypatch.setenv(ledger.ENV, "restored after the test")  # (ledger.start() sets it)
    kept = []
    for values in ("strategy.gamma=1", "strategy.gamma=3"):
        cfg = compose_hydra(["strategy=generalized_mean", values, f"hydra.sweep.dir={tmp_path}"])
        JobStatusReport().on_multirun_start(cfg)
        kept.append(tmp_path / ledger.FOLDER / ledger.os.environ[ledger.ENV] / "multirun.yaml")
    JobStatusReport.reset()
    assert kept[0] != kept[1]
    assert [list(OmegaConf.load(p).hydra.overrides.task) for p in kept] == [
        ["strategy=generalized_mean", "strategy.gamma=1"],
        ["strategy=generalized_mean", "strategy.gamma=3"]]


def test_a_sweep_that_stops_early_says_what_each_job_reached(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher that dies (a worker killed by the OS, an Optuna study with no completed trial)
    ends with the summary from the ledger and one line, not a traceback."""
    from mtlbench import ledger
    from mtlbench.callbacks import JobStatusReport
    from mtlbench.cli import _report_errors_on_one_line

    monkeypatch.setenv(ledger.ENV, "restored after the test")  # (ledger.start() sets it)
    # (handlers earlier in-process runs left on the root logger may write to closed streams)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    JobStatusReport.reset()
    JobStatusReport.multirun, JobStatusReport.sweep_dir = True, tmp_path
    ledger.start()
    ledger.record(tmp_path, 0, tmp_path / "0_seed=0", "finished")
    ledger.record(tmp_path, 1, tmp_path / "1_seed=1", "started")  # its worker was killed

    def launcher() -> None:
        raise RuntimeError("A worker process managed by the executor was unexpectedly terminated")
    with pytest.raises(SystemExit) as stopped:
        _report_errors_on_one_line(launcher)
    err = capsys.readouterr().err
    JobStatusReport.reset()
    assert stopped.value.code == 1 and "Traceback" not in err
    assert err.count("mtlbench: error:") == 1
    assert ("the sweep stopped (RuntimeError: A worker process managed by the executor was "
            "unexpectedly terminated) with 1 finished, 0 failed and 1 unfinished jobs") in err
