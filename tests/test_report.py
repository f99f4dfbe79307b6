"""`mtlbench report` on synthetic run trees: aggregation, Δm%, rank, problems, files, errors."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtlbench.report import main, pareto_front

ACC, MSE = "accuracy", "mse"


def make_job(root: Path, name: str, strategy: str, seed: int,
             tasks: dict[str, float] | None, *, params: dict[str, Any] | None = None,
             overrides: list[str] | None = None, error: str | None = None,
             extra: dict[str, Any] | None = None) -> Path:
    """A Hydra job dir: .hydra/{overrides,config,hydra}.yaml, metrics.json and/or error.json.

    ``tasks`` maps task → test metric (``cls*`` tasks are classification/accuracy, others mse;
    None is written as null); ``tasks=None`` writes no metrics.json. ``extra``: more top-level
    keys of metrics.json. ``error`` writes error.json (after metrics.json, if any).
    """
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"strategy={strategy}", f"seed={seed}", *(overrides or [])]))
    config = {"seed": seed, "strategy": {"_target_": f"x.{strategy}", **(params or {})}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if tasks is not None:
        metrics = {"strategy": strategy, "seed": seed, "steps": 6, "tasks": {
            t: {"kind": "classification", "loss": 1.0, ACC: v} if t.startswith("cls")
            else {"kind": "regression", "loss": v, MSE: v} for t, v in tasks.items()},
            **(extra or {})}
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / "error.json").write_text(json.dumps({"error": error, "type": "ConfigError"}))
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
    assert set(rows) >= {"generalized_mean gamma=-inf", "generalized_mean gamma=0"}
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
    assert labels == {"generalized_mean gamma=0.5", "generalized_mean gamma=2", "db_mtl"}


# ----------------------------------------------------------------------------- issue fixes
def set_mtime(job: Path, seconds: float) -> None:
    os.utime(job / "metrics.json", (seconds, seconds))


def test_duplicate_seeds_count_once_newest_kept(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The same (configuration, seed) in two sweep dirs is used once: the newest metrics.json."""
    a, b = tmp_path / "a", tmp_path / "b"
    set_mtime(make_job(a, "0", "equal", 0, {"cls": 0.1}), 1000)  # dropped (older)
    set_mtime(make_job(a, "1", "equal", 1, {"cls": 0.6}), 3000)  # kept (newer)
    set_mtime(make_job(b, "0", "equal", 0, {"cls": 0.8}), 2000)  # kept
    set_mtime(make_job(b, "1", "equal", 1, {"cls": 0.9}), 2000)  # dropped
    set_mtime(make_job(a, "2", "realtime", 0, {"cls": 0.3}), 5000)  # same mtime: later path wins
    set_mtime(make_job(b, "2", "realtime", 0, {"cls": 0.4}), 5000)
    document = report_json(capsys, str(a), str(b), "--no-files")
    rows = rows_by_label(document)
    assert rows["equal"]["seeds"] == [0, 1]
    assert sorted(rows["equal"]["tasks"]["cls"]["values"]) == [0.6, 0.8]
    assert rows["equal"]["tasks"]["cls"]["std"] == pytest.approx(math.sqrt(0.02))
    assert rows["realtime"]["seeds"] == [0] and rows["realtime"]["tasks"]["cls"]["mean"] == 0.4
    dropped = {str(Path(p["path"]).relative_to(tmp_path)): p for p in document["problems"]}
    assert set(dropped) == {"a/0", "b/1", "a/2"}
    assert {p["problem"] for p in dropped.values()} == {"duplicate seed"}
    assert str(b / "0") in dropped["a/0"]["error"]
    assert main([str(a), str(b), "--no-files"]) == 0
    table = capsys.readouterr().out
    assert "| equal " in table and "| 2     |" in table.split("| equal")[1]
    assert f"**duplicate seed** `{a / '0'}`" in table


def test_gamma_rows_sort_numerically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gammas = [2.0, -0.5, math.inf, 0.0, -math.inf, 0.5, -2.0, 10.0]
    for i, gamma in enumerate(gammas):
        make_job(tmp_path, f"{i}", "generalized_mean", 0, {"cls": 0.5}, params={"gamma": gamma})
    expected = [f"generalized_mean gamma={g}" for g in ("-inf", "-2", "-0.5", "0", "0.5", "2",
                                                        "10", "inf")]
    assert [r["label"] for r in report_json(capsys, str(tmp_path), "--no-files")["rows"]] \
        == expected
    assert main([str(tmp_path), "--no-files"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "generalized_mean" in line]
    assert [line.split("|")[1].strip() for line in lines] == expected


def test_single_seed_spread_is_a_dash(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    make_job(tmp_path / "runs", "0", "equal", 0, {"cls": 0.5, "reg": 1.0})
    assert main([str(tmp_path / "runs")]) == 0
    table = capsys.readouterr().out
    assert "| 0.5 ± —" in table and "| 1 ± —" in table and "± 0 " not in table
    equal = rows_by_label(report_json(capsys, str(tmp_path / "runs")))["equal"]
    assert equal["tasks"]["cls"]["std"] is None and equal["tasks"]["cls"]["mean"] == 0.5
    with (tmp_path / "runs" / "report.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert row["cls/accuracy/std"] == "" and row["cls/accuracy/mean"] == "0.5"


def test_pareto_plot_numbers_points_with_a_key_and_clips_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    saved: dict[str, Figure] = {}
    original = Figure.savefig

    def record(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        saved[Path(fname).name] = self
        original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    n = 35
    for i in range(n):  # clustered points with long labels
        make_job(tmp_path, f"{i}", "generalized_mean", 0,
                 {"cls": 0.8 + i / 1e4, "reg": 1.0 - i / 1e4}, params={"gamma": i / 10},
                 overrides=[f"data.tasks.reg.loss_scale={i + 1}"])
    assert main([str(tmp_path)]) == 0
    labels = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()
              if "generalized_mean" in line]
    fig = saved["pareto.png"]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    key = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert key == [f"{i}  {label}" for i, label in enumerate(labels, start=1)]
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(i) for i in range(1, n + 1))
    boxes = [ax.get_tightbbox(renderer), *(t.get_window_extent(renderer) for t in ax.texts),
             *(legend.get_window_extent(renderer) for legend in fig.legends)]
    for box in boxes:
        assert box.x0 >= -1 and box.y0 >= -1
        assert box.x1 <= fig.bbox.width + 1 and box.y1 <= fig.bbox.height + 1


def test_float_labels_are_compact_and_round_trip(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    values = {1e8: "1e+08", 1e-08: "1e-08", 0.5: "0.5", 1000.0: "1000", 123456789.0: "123456789",
              0.1 + 0.2: "0.30000000000000004", -math.inf: "-inf", 2.5e-5: "2.5e-05"}
    for i, gamma in enumerate(values):
        make_job(tmp_path, f"{i}", "generalized_mean", 0, {"cls": 0.5}, params={"gamma": gamma})
    labels = set(rows_by_label(report_json(capsys, str(tmp_path), "--no-files")))
    assert labels == {f"generalized_mean gamma={text}" for text in values.values()}
    for gamma, text in values.items():
        assert float(text) == gamma


def test_says_where_files_were_written(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = study / "out"
    assert main([str(study), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err == f"Wrote report.md, report.csv, report.json, pareto.png in {out}\n"
    for name in ("report.md", "report.csv", "report.json", "pareto.png"):
        assert (out / name).is_file()
    assert json.loads((out / "report.json").read_text())["counts"]["finished"] == 8
    assert main([str(study), "--no-files", "--format", "json"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("argv", "message"), [
    ([""], "argument DIR: DIR is empty; give a folder (`.` for this one)"),
    (["runs", "--out", ""], "argument --out: --out is empty; give a folder (`.` for this one)"),
    (["--format", "xml", "runs"], "argument --format: invalid choice: 'xml'"),
])
def test_usage_errors_are_one_line(argv: list[str], message: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """(argparse printed its usage block first; an empty DIR would otherwise be the current
    dir.)"""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"mtlbench report: error: {message}"), err


def test_help_shows_delta_m_percent(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Δm%" in text and "%%" not in text


def test_report_imports_nothing_heavy(study: Path) -> None:
    code = ("import sys; from mtlbench.report import main; "
            "assert main([sys.argv[1], '--no-files', '--format', 'json']) == 0; "
            "heavy = [m for m in ('torch', 'matplotlib', 'numpy', 'hydra', 'mtlbench.train') "
            "if m in sys.modules]; assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code, str(study)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_null_metric_is_missing_and_listed(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """null (non-finite) test metrics are left out of that task's mean; new top-level keys are
    ignored; the run is listed as "non-finite metric"."""
    extra = {"nonfinite": ["tasks.cls.accuracy"], "fingerprint": "abc",
             "selected": {"step": 3}, "last": {"tasks": {"cls": {"accuracy": 0.1}}}}
    make_job(tmp_path, "0", "equal", 0, {"cls": 0.6, "reg": 1.0})
    make_job(tmp_path, "1", "equal", 1, {"cls": 0.8, "reg": 2.0})
    bad = make_job(tmp_path, "2", "equal", 2, {"cls": None, "reg": 3.0}, extra=extra)
    make_job(tmp_path, "3", "realtime", 0, {"cls": 0.9, "reg": None}, extra=extra)
    document = report_json(capsys, str(tmp_path), "--no-files")
    assert document["counts"] == {"finished": 4, "failed": 0, "unfinished": 0}
    rows = rows_by_label(document)
    assert rows["equal"]["seeds"] == [0, 1, 2]
    assert rows["equal"]["tasks"]["cls"]["mean"] == pytest.approx(0.7)
    assert rows["equal"]["tasks"]["reg"]["mean"] == pytest.approx(2.0)
    assert rows["realtime"]["tasks"]["reg"]["mean"] is None
    problems = {Path(p["path"]).name: p for p in document["problems"]}
    assert problems["2"]["problem"] == "non-finite metric" and "cls" in problems["2"]["error"]
    assert problems["2"]["status"] == "finished" and set(problems) == {"2", "3"}
    assert main([str(tmp_path), "--no-files"]) == 0
    table = capsys.readouterr().out
    assert f"**non-finite metric** `{bad}`" in table
    assert "0.7 ± 0.1414 [-0.5706, 1.971] (n=2)" in table  # 95% CI of the two finite values


def test_finished_run_stays_finished_beside_a_newer_error_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = make_job(tmp_path, "0", "equal", 0, {"cls": 0.5}, error="rejected resume")
    set_mtime(job, 1000)  # error.json (written now) is newer
    failed = make_job(tmp_path, "1", "equal", 1, None, error="diverged")
    document = report_json(capsys, str(tmp_path), "--no-files")
    assert document["counts"] == {"finished": 1, "failed": 1, "unfinished": 0}
    assert [Path(p["path"]) for p in document["problems"]] == [failed]
    assert rows_by_label(document)["equal"]["seeds"] == [0]


def test_a_strategy_setting_given_on_the_command_line_is_in_the_label(tmp_path: Path,
                                                                     capsys) -> None:
    """``strategy=mgda ++strategy.params=representation`` is MGDA-UB: its label says so even when
    no other mgda run differs from it (a fixed default stays out of the label)."""
    root = tmp_path / "ub"
    for seed in (0, 1):
        make_job(root, f"{seed}_mgda", "mgda", seed, {"cls": 0.8 + seed / 100},
                 params={"params": "representation", "max_iters": 100},
                 overrides=["++strategy.params=representation"])
        make_job(root, f"{seed}_equal", "equal", seed, {"cls": 0.7}, params={"eps": 1e-8})
    labels = set(rows_by_label(report_json(capsys, str(root))))
    assert labels == {"mgda params=representation", "equal"}


# ----------------------------------------------------------------------------- recorded configs
def recorded(seed: int, **settings: Any) -> dict[str, Any]:
    """metrics.json's ``config`` (what the run learned with) for ``make_job(extra=...)``."""
    return {"config": {"seed": seed, "optimizer.lr": 0.001, "trainer.max_steps": 10,
                       **settings}}


def test_presets_with_the_same_overrides_are_different_configurations(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two presets (``experiment=``) with one command line otherwise: the recorded configs differ,
    so two rows and no seed of either is taken for a duplicate of the other."""
    for preset, lr in (("slow", 0.0001), ("fast", 0.05)):
        for seed in (0, 1):
            make_job(tmp_path / preset, str(seed), "equal", seed, {"cls": lr + seed},
                     overrides=[f"experiment={preset}"],
                     extra=recorded(seed, **{"optimizer.lr": lr}))
    document = report_json(capsys, str(tmp_path / "slow"), str(tmp_path / "fast"), "--no-files")
    rows = rows_by_label(document)
    assert set(rows) == {"equal experiment=slow", "equal experiment=fast"}
    assert rows["equal experiment=slow"]["tasks"]["cls"]["values"] == [0.0001, 1.0001]
    assert rows["equal experiment=fast"]["tasks"]["cls"]["values"] == [0.05, 1.05]
    assert document["problems"] == []


def test_dirs_holding_only_metrics_json_keep_the_strategy_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without ``.hydra/``, the strategy's hyperparameters come from the recorded config."""
    for i, gamma in enumerate((0.0, math.inf)):
        job = make_job(tmp_path, str(i), "generalized_mean", 0, {"cls": 0.5 + i / 10},
                       extra=recorded(0, **{"strategy._target_": "x.GM", "strategy.gamma":
                                            "inf" if math.isinf(gamma) else gamma}))
        for name in ("overrides.yaml", "config.yaml"):
            (job / ".hydra" / name).unlink()
        (job / ".hydra").rmdir()
    document = report_json(capsys, str(tmp_path), "--no-files")
    rows = rows_by_label(document)
    assert set(rows) == {"generalized_mean gamma=0", "generalized_mean gamma=inf"}
    assert rows["generalized_mean gamma=inf"]["tasks"]["cls"]["mean"] == pytest.approx(0.6)
    assert document["problems"] == []


def test_one_setting_written_two_ways_is_one_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``optimizer.lr=1e-3``, ``=0.001`` and the default 0.001 record one config: one row."""
    for seed, typed in enumerate(("optimizer.lr=1e-3", "optimizer.lr=0.001", None)):
        make_job(tmp_path, str(seed), "equal", seed, {"cls": 0.5}, extra=recorded(seed),
                 overrides=[typed] if typed else [])
    rows = rows_by_label(report_json(capsys, str(tmp_path), "--no-files"))
    assert list(rows) == ["equal"] and rows["equal"]["seeds"] == [0, 1, 2]


def test_configurations_that_read_the_same_get_the_setting_that_tells_them_apart(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same command line, configs differing in one setting no label shows: the labels gain it."""
    for width in (64, 128):
        make_job(tmp_path / str(width), "0", "equal", 0, {"cls": width / 1000},
                 extra=recorded(0, **{"model.width": width, "model.depth": 2}))
    make_job(tmp_path / "old", "0", "equal", 0, {"cls": 0.9})  # metrics.json without config
    rows = rows_by_label(report_json(capsys, str(tmp_path), "--no-files"))
    assert set(rows) == {"equal config=recorded model.width=64",
                         "equal config=recorded model.width=128", "equal config=unrecorded"}
    assert rows["equal config=recorded model.width=64"]["tasks"]["cls"]["mean"] == 0.064


def test_a_setting_older_runs_do_not_record_reads_unset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs from before a setting existed (``data.version``) beside runs that record it: the older
    row says ``data.version=<unset>`` instead of reading as the current default."""
    make_job(tmp_path / "old", "0", "equal", 0, {"cls": 0.5}, extra=recorded(0))
    make_job(tmp_path / "new", "0", "equal", 0, {"cls": 0.6},
             extra=recorded(0, **{"data.version": 2}))
    rows = rows_by_label(report_json(capsys, str(tmp_path), "--no-files"))
    assert set(rows) == {"equal data.version=2", "equal data.version=<unset>"}
    assert rows["equal data.version=<unset>"]["tasks"]["cls"]["mean"] == 0.5


def stl_and_mtl(root: Path, steps: int, mtl: tuple[float, float],
                stl: tuple[float, float] | None) -> None:
    """An ``equal`` run (cls accuracy, reg mse) and, unless ``stl`` is None, its two single-task
    baselines, all trained ``steps`` steps."""
    extra = recorded(0, **{"trainer.max_steps": steps, "trainer.gradient_engine": "auto"})
    make_job(root, f"equal_{steps}", "equal", 0, {"cls": mtl[0], "reg": mtl[1]},
             overrides=[f"trainer.max_steps={steps}"], extra=extra)
    for task, value in zip(("cls", "reg") if stl else (), stl or (), strict=True):
        only = {"config": {**extra["config"], "data.only": task,  # an engine no STL run uses
                           "trainer.gradient_engine": "loop"}}
        make_job(root, f"stl_{task}_{steps}", "single_task", 0, {task: value}, extra=only,
                 overrides=[f"trainer.max_steps={steps}", f"data.only={task}"])


def test_delta_m_compares_with_the_baselines_of_the_same_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """10- and 30-step runs each against their own 10- and 30-step baselines, never the pool;
    a configuration without baselines of its settings gets n/a and is named."""
    stl_and_mtl(tmp_path, 10, mtl=(0.6, 4.0), stl=(0.8, 2.0))
    stl_and_mtl(tmp_path, 30, mtl=(0.9, 1.0), stl=(0.9, 2.0))
    stl_and_mtl(tmp_path, 50, mtl=(0.95, 0.5), stl=None)
    document = report_json(capsys, str(tmp_path), "--no-files")
    rows = rows_by_label(document)
    # 10 steps: ½ [ -(0.6 - 0.8)/0.8 + (4 - 2)/2 ] × 100 = ½ [25 + 100] = 62.5
    # 30 steps: ½ [ -(0.9 - 0.9)/0.9 + (1 - 2)/2 ] × 100 = ½ [0 - 50]   = -25
    assert rows["equal trainer.max_steps=10"]["delta_m_pct"] == pytest.approx(62.5)
    assert rows["equal trainer.max_steps=30"]["delta_m_pct"] == pytest.approx(-25.0)
    assert rows["equal trainer.max_steps=30"]["baselines"] == {"cls": 0.9, "reg": 2.0}
    assert rows["equal trainer.max_steps=50"]["delta_m_pct"] is None
    ranks = [rows[f"equal trainer.max_steps={steps}"]["rank"] for steps in (30, 10)]
    assert ranks == [1, 2]
    assert rows["single_task data.only=cls trainer.max_steps=10"]["delta_m_pct"] == 0.0
    assert [s["settings"] for s in document["baselines"]] == [
        {"trainer.max_steps": 10}, {"trainer.max_steps": 30}]
    assert main([str(tmp_path), "--no-files"]) == 0
    table = capsys.readouterr().out
    assert "2 sets of baselines, which differ in `trainer.max_steps`" in table
    assert "Δm%: n/a for `equal trainer.max_steps=50`: no single-task runs" in table


def test_seconds_per_step_only_over_seeds_timed_alike(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """s/step is a mean over seeds run on one device with one thread count; else none."""
    for seed, threads in enumerate((1, 1, 2)):
        strategy = "equal" if seed < 2 else "realtime"
        timing = {"train_seconds": 6.0 * (seed + 1), "num_threads": threads, "device": "cpu"}
        make_job(tmp_path, str(seed), strategy, seed, {"cls": 0.5}, extra=timing)
        make_job(tmp_path, f"{seed}_mixed", "geometric", seed, {"cls": 0.5},
                 extra={**timing, "num_threads": seed})
    rows = rows_by_label(report_json(capsys, str(tmp_path), "--no-files"))
    assert rows["equal"]["seconds_per_step"] == pytest.approx(1.5)  # (6 + 12) / 2 / 6 steps
    assert rows["realtime"]["seconds_per_step"] == pytest.approx(3.0)
    assert rows["geometric"]["seconds_per_step"] is None
