"""`mtlbench report` on synthetic run trees: aggregation, Δm%, rank, problems, files, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtlbench.report import main, pareto_front

ACC, MSE = "accuracy", "mse"


def make_job(root: Path, name: str, strategy: str, seed: int,
             tasks: dict[str, float] | None, *, params: dict[str, Any] | None = None,
             overrides: list[str] | None = None, error: str | None = None) -> Path:
    """A Hydra job dir: .hydra/{overrides,config,hydra}.yaml, and metrics.json or error.json.

    ``tasks`` maps task → test metric (``cls*`` tasks are classification/accuracy, others mse);
    None leaves the job unfinished.
    """
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"strategy={strategy}", f"seed={seed}", *(overrides or [])]))
    config = {"seed": seed, "strategy": {"_target_": f"x.{strategy}", **(params or {})}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if error is not None:
        (job / "error.json").write_text(json.dumps({"error": error, "type": "ConfigError"}))
    elif tasks is not None:
        metrics = {"strategy": strategy, "seed": seed, "steps": 6, "tasks": {
            t: {"kind": "classification", "loss": 1.0, ACC: v} if t.startswith("cls")
            else {"kind": "regression", "loss": v, MSE: v} for t, v in tasks.items()}}
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """equal (2 seeds), realtime (2 seeds), single-task baselines, one failed, one unfinished."""
    root = tmp_path / "study"
    make_job(root / "mtl", "0_strategy=equal,seed=0", "equal", 0, {"cls": 0.8, "reg": 2.0})
    make_job(root / "mtl", "1_strategy=equal,seed=1", "equal", 1, {"cls": 0.6, "reg": 4.0})
    make_job(root / "mtl", "2_strategy=realtime,seed=0", "realtime", 0, {"cls": 0.9, "reg": 1.0})
    make_job(root / "mtl", "3_strategy=realtime,seed=1", "realtime", 1, {"cls": 0.9, "reg": 1.0})
    make_job(root / "mtl", "4_strategy=geometric,seed=0", "geometric", 0, None,
             error="Training diverged at step 3")
    make_job(root / "mtl", "5_strategy=geometric,seed=1", "geometric", 1, None)
    for seed, (acc, mse) in enumerate([(0.7, 1.5), (0.8, 2.5)]):
        make_job(root / "stl", f"{seed}_data.only=cls,seed={seed}", "single_task", seed,
                 {"cls": acc}, overrides=["data.only=cls"])
        make_job(root / "stl", f"{seed + 2}_data.only=reg,seed={seed}", "single_task", seed,
                 {"reg": mse}, overrides=["data.only=reg"])
    return root


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main([*args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def rows_by_label(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["label"]: row for row in document["rows"]}


def test_mean_and_sample_std_over_seeds(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    equal = rows_by_label(report_json(capsys, str(study)))["equal"]
    assert equal["seeds"] == [0, 1]
    assert equal["tasks"]["cls"]["mean"] == pytest.approx(0.7)
    assert equal["tasks"]["cls"]["std"] == pytest.approx(math.sqrt(0.02))  # sample std, ddof=1
    assert equal["tasks"]["reg"]["mean"] == pytest.approx(3.0)
    assert equal["tasks"]["reg"]["std"] == pytest.approx(math.sqrt(2.0))


def test_delta_m_against_baselines_and_rank(study: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rows = rows_by_label(report_json(capsys, str(study)))
    # baselines: cls accuracy 0.75 (higher is better), reg mse 2.0 (lower is better)
    # equal:    ½ [ -(0.70 - 0.75)/0.75 + (3.0 - 2.0)/2.0 ] × 100 = ½ [  6.667 + 50 ] = 28.333
    # realtime: ½ [ -(0.90 - 0.75)/0.75 + (1.0 - 2.0)/2.0 ] × 100 = ½ [ -20    - 50 ] = -35
    assert rows["equal"]["delta_m_pct"] == pytest.approx(50 * (0.05 / 0.75 + 0.5))
    assert rows["realtime"]["delta_m_pct"] == pytest.approx(-35.0)
    assert (rows["realtime"]["rank"], rows["equal"]["rank"]) == (1, 2)
    baseline = rows["single_task data.only=cls"]
    assert baseline["baseline"] and baseline["rank"] is None
    assert baseline["tasks"]["cls"]["mean"] == pytest.approx(0.75)


def test_failed_and_unfinished_jobs_are_listed(study: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    document = report_json(capsys, str(study))
    problems = {Path(p["path"]).name: p for p in document["problems"]}
    failed = problems["4_strategy=geometric,seed=0"]
    assert failed["status"] == "failed" and "Training diverged at step 3" in failed["error"]
    assert problems["5_strategy=geometric,seed=1"]["status"] == "unfinished"
    assert document["counts"] == {"finished": 8, "failed": 1, "unfinished": 1}
    assert main([str(study)]) == 0
    table = capsys.readouterr().out
    assert "**failed** `" in table and "**unfinished** `" in table
    assert "Training diverged at step 3" in table


def test_writes_markdown_csv_and_plots(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gm = study / "gm"
    for seed in (0, 1):
        for num, gamma in enumerate((-math.inf, 0.0, 1.0)):
            make_job(gm, f"{num}_{seed}", "generalized_mean", seed,
                     {"cls": 0.6 + 0.1 * num, "reg": 3.0 - num}, params={"gamma": gamma},
                     overrides=[f"strategy.gamma={gamma}"])
    assert main([str(study), "--pareto", "reg", "cls"]) == 0
    printed = capsys.readouterr().out
    markdown = (study / "report.md").read_text()
    assert markdown == printed
    assert "| realtime " in markdown and "![pareto](pareto.png)" in markdown
    with (study / "report.csv").open() as handle:
        rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    assert float(rows["equal"]["cls/accuracy/mean"]) == pytest.approx(0.7)
    assert rows["realtime"]["rank"] == "1"
    assert set(rows) >= {"generalized_mean gamma=-inf", "generalized_mean gamma=0.0"}
    for png in ("gamma.png", "pareto.png"):
        assert (study / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_dir_and_no_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_job(tmp_path / "runs", "0", "equal", 0, {"cls": 0.5, "reg": 1.0})
    document = report_json(capsys, str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert document["rows"][0]["delta_m_pct"] is None and document["rows"][0]["rank"] is None
    assert (tmp_path / "out" / "report.md").is_file()
    assert not (tmp_path / "runs" / "report.md").exists()
    assert "n/a" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("make_args", [
    lambda tmp: [str(tmp / "missing")],
    lambda tmp: [str(tmp)],  # exists, no runs
    lambda tmp: [str(make_job(tmp, "job", "equal", 0, {"cls": 0.5}).parent), "--pareto", "cls",
                 "nope"],
])
def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          make_args: Any) -> None:
    assert main(make_args(tmp_path)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mtlbench report: ") and captured.err.count("\n") == 1


def test_pareto_front_respects_metric_directions() -> None:
    points = [(0.9, 2.0), (0.8, 1.0), (0.7, 3.0), (0.9, 1.5)]
    # x = accuracy (higher is better), y = mse (lower is better)
    assert pareto_front(points, (True, False)) == [1, 3]


def test_labels_show_only_the_hyperparameters_that_vary(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for i, gamma in enumerate((0.5, 2.0)):
        make_job(tmp_path, f"{i}_gamma={gamma}", "generalized_mean", 0, {"cls": 0.5 + i / 10},
                 params={"gamma": gamma, "eps": 1e-8})
    make_job(tmp_path, "2_db", "db_mtl", 0, {"cls": 0.9}, params={"ema_beta": 0.9, "eps": 1e-8})
    labels = set(rows_by_label(report_json(capsys, str(tmp_path))))
    assert labels == {"generalized_mean gamma=0.5", "generalized_mean gamma=2.0", "db_mtl"}
