"""`mtlbench report`: 95% CIs, time and selected-step columns, published reference tables."""

from __future__ import annotations

import csv
import functools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, compose_config
from omegaconf import OmegaConf

from mtlbench import references
from mtlbench.report import ci95, main, t_quantile_975
from mtlbench.rundir import result_config

#: t_{0.975, ν} as printed in statistics tables (3 decimals).
KNOWN_T = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045, math.inf: 1.960}


def make_run(root: Path, name: str, strategy: str, seed: int, accuracies: dict[str, float], *,
             data: str = "multimnist", params: dict[str, Any] | None = None,
             overrides: list[str] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """A finished job dir: .hydra/{overrides,config,hydra}.yaml (Hydra's choices name the data
    config) and a metrics.json with one classification task per entry of ``accuracies``."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"strategy={strategy}", f"seed={seed}", *(overrides or [])]))
    shipped = REPO / "conf" / "strategy" / f"{strategy}.yaml"  # (a run records all settings)
    defaults = yaml.safe_load(shipped.read_text()) if shipped.exists() else {}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"seed": seed, "strategy": {**defaults, **(params or {})}}))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"data": data, "strategy": strategy}}}}))
    metrics = {"strategy": strategy, "seed": seed, "steps": 100,
               "tasks": {t: {"kind": "classification", "loss": 0.1, "accuracy": v}
                         for t, v in accuracies.items()}, **(extra or {})}
    (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main([*args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def by_label(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["label"]: row for row in document["rows"]}


def main_table(markdown: str) -> dict[str, dict[str, str]]:
    """The main markdown table: configuration → header → cell (padding stripped)."""
    lines = [line for line in markdown.split("## ")[0].splitlines() if line.startswith("| ")]
    split = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    header = split[0]
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in split[2:]}


# ----------------------------------------------------------------------------- t and the CI
@pytest.mark.parametrize(("dof", "expected"), KNOWN_T.items())
def test_t_quantile_matches_the_tables(dof: float, expected: float) -> None:
    assert round(t_quantile_975(dof), 3) == expected


def t_cdf_upper_half(q: float, dof: float, steps: int = 4000) -> float:
    """P(0 < T < q) for Student's t by Simpson's rule on its density (independent of the table)."""
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def density(x: float) -> float:
        return math.exp(log_c - (dof + 1) / 2 * math.log1p(x * x / dof))

    h = q / steps
    total = density(0) + density(q) + sum((4 if i % 2 else 2) * density(i * h)
                                          for i in range(1, steps))
    return total * h / 3


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 10, 30, 31, 35, 50, 120, 1000])
def test_t_quantile_is_the_975_percent_point(dof: int) -> None:
    """Table (dof ≤ 30) and Cornish-Fisher (beyond) both put 0.475 of the mass in (0, t)."""
    assert t_cdf_upper_half(t_quantile_975(dof), dof) == pytest.approx(0.475, abs=2e-7)


def test_t_quantile_decreases_to_the_normal_quantile() -> None:
    values = [t_quantile_975(d) for d in range(1, 500)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > t_quantile_975(math.inf) == pytest.approx(1.959963985, abs=1e-9)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_ci95_by_hand() -> None:
    values = [0.6, 0.8, 0.7, 0.9]  # mean 0.75, sd √(0.05/3), t_{0.975,3} = 3.182446305
    half = 3.182446305 * math.sqrt(0.05 / 3) / 2
    lo, hi = ci95(values)  # type: ignore[misc]
    assert (lo, hi) == (pytest.approx(0.75 - half), pytest.approx(0.75 + half))
    assert ci95([0.5]) is None and ci95([]) is None


# ----------------------------------------------------------------------------- the main table
def make_study(root: Path, data: str = "multimnist") -> Path:
    """Runs on ``data``: equal (3 seeds), mgda on the representation (2 seeds), mgda on the
    shared parameters (1 seed), single-task baselines (2 seeds each); train_seconds on some."""
    for seed, (left, right) in enumerate([(0.96, 0.95), (0.97, 0.94), (0.98, 0.96)]):
        make_run(root, f"equal/{seed}", "equal", seed, {"left": left, "right": right},
                 data=data, extra={"train_seconds": 2.0 * (seed + 1)})  # 0.02, 0.04, 0.06 s/step
    for seed, (left, right) in enumerate([(0.95, 0.93), (0.97, 0.95)]):
        make_run(root, f"mgda_ub/{seed}", "mgda", seed, {"left": left, "right": right},
                 data=data, params={"params": "representation"},
                 overrides=["strategy.params=representation"])
    make_run(root, "mgda/0", "mgda", 0, {"left": 0.90, "right": 0.90}, data=data,
             params={"params": "shared"})
    for seed in (0, 1):
        make_run(root, f"stl_left/{seed}", "single_task", seed, {"left": 0.97 + seed / 100},
                 data=data, overrides=["data.only=left"])
        make_run(root, f"stl_right/{seed}", "single_task", seed, {"right": 0.95 + seed / 100},
                 data=data, overrides=["data.only=right"])
    return root


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """:func:`make_study` on MultiMNIST."""
    return make_study(tmp_path / "runs")


def test_ci_in_json_csv_and_table(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = by_label(report_json(capsys, str(runs)))
    half = 4.302652730 * 0.01 / math.sqrt(3)  # left: 0.96, 0.97, 0.98 (sd 0.01)
    assert rows["equal"]["tasks"]["left"]["ci95"] == [pytest.approx(0.97 - half),
                                                       pytest.approx(0.97 + half)]
    assert rows["mgda params=shared"]["tasks"]["left"]["ci95"] is None  # one seed
    assert main([str(runs)]) == 0
    table = main_table(capsys.readouterr().out)
    assert (0.97 - half, 0.97 + half) == (pytest.approx(0.9452, abs=1e-4),
                                          pytest.approx(0.9948, abs=1e-4))
    assert table["equal"]["left accuracy ↑"] == "0.97 ± 0.01 [0.9452, 0.9948]"
    assert table["mgda params=shared"]["left accuracy ↑"] == "0.9 ± — [—]"
    with (runs / "report.csv").open() as handle:
        lines = {line["configuration"]: line for line in csv.DictReader(handle)}
    assert float(lines["equal"]["left/accuracy/ci95_lo"]) == pytest.approx(0.97 - half)
    assert float(lines["equal"]["left/accuracy/ci95_hi"]) == pytest.approx(0.97 + half)
    assert lines["mgda params=shared"]["left/accuracy/ci95_lo"] == ""


def test_seconds_per_step_column(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train_seconds / steps of metrics.json, mean over seeds; — where it is not recorded."""
    rows = by_label(report_json(capsys, str(runs), "--no-files"))
    assert rows["equal"]["seconds_per_step"] == pytest.approx(0.04)
    assert rows["mgda params=shared"]["seconds_per_step"] is None
    assert main([str(runs), "--no-files"]) == 0
    table = main_table(capsys.readouterr().out)
    assert "selected step" not in table["equal"]
    assert table["equal"]["s/step"] == "0.04" and table["mgda params=shared"]["s/step"] == "—"


def test_selected_step_column_only_with_best_val(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for seed, step in enumerate((300, 500, None)):
        extra = {"selected": {"step": step, "criterion": "val mean accuracy"}} if step else {}
        make_run(tmp_path, f"equal/{seed}", "equal", seed, {"left": 0.9}, extra=extra)
    make_run(tmp_path, "uw/0", "uw", 0, {"left": 0.9})
    make_run(tmp_path, "mgda/0", "mgda", 0, {"left": 0.9},
             extra={"selected": {"step": 700, "criterion": "val mean accuracy"}})
    rows = by_label(report_json(capsys, str(tmp_path)))
    assert rows["equal"]["selected_steps"] == [300, 500, None]
    assert rows["uw"]["selected_steps"] == [None]
    markdown = (tmp_path / "report.md").read_text()
    assert "criterion: `val mean accuracy`" in markdown
    table = main_table(markdown)
    assert table["equal"]["selected step"] == "300–500, 1 last"
    assert table["mgda"]["selected step"] == "700" and table["uw"]["selected step"] == "—"
    with (tmp_path / "report.csv").open() as handle:
        steps = {line["configuration"]: line["selected_steps"] for line in csv.DictReader(handle)}
    assert json.loads(steps["equal"]) == [300, 500, None] and steps["uw"] == ""


# ----------------------------------------------------------------------------- references
@functools.cache
def composed_strategy(name: str) -> dict:
    return dict(compose_config([f"strategy={name}"]).strategy)


def test_shipped_tables_map_onto_our_configs() -> None:
    """Every table loads with the documented columns; each strategy, strategy setting, data
    config and task it names exists in conf/."""
    assert references.names() == ["kurin2022_multimnist", "phan2022_fmtl_table1",
                                  "sener2018_table3", "shi2023_recon_table1"]
    strategies = {p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml")}
    for name in references.names():
        text = (REPO / "mtlbench" / "references" / f"{name}.csv").read_text()
        assert tuple(next(csv.reader([text.splitlines()[0]]))) == references.COLUMNS
        for pub in references.load(name):
            assert pub.source and pub.protocol and pub.method and math.isfinite(pub.value)
            tasks = yaml.safe_load((REPO / "conf" / "data" / f"{pub.data}.yaml").read_text())
            assert set(pub.our_tasks) <= set(tasks["tasks"]), (name, pub)
            if pub.strategy:
                assert pub.strategy in strategies, (name, pub.strategy)
                config = composed_strategy(pub.strategy)  # presets (defaults lists) too
                assert set(pub.strategy_params) <= set(config), (name, pub)
            else:
                assert not pub.strategy_params


def test_a_few_transcribed_values() -> None:
    sener = {(p.method, p.task): p for p in references.load("sener2018_table3")}
    assert sener[("MGDA-UB", "left")].value == 97.26
    assert sener[("MGDA-UB", "left")].strategy_params == {"params": "representation"}
    assert sener[("uniform scaling", "right")].strategy == "equal"
    kurin = {(p.method, p.metric): p for p in references.load("kurin2022_multimnist")}
    equal = kurin[("unitary scalarization (equal)", "accuracy")]
    assert (equal.value, equal.ci95, equal.sd, equal.our_tasks) == (94.76, 0.44, None,
                                                                    ("left", "right"))
    recon = {(p.method, p.task): p for p in references.load("shi2023_recon_table1")}
    assert recon[("MGDA", "T1 (MNIST)")].our_tasks == ("right",)
    assert recon[("CAGrad", "Δm%")].value == -0.90
    assert ("single task", "Δm%") not in recon  # "–" in the paper


def reference_rows(document: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["method"], r["task"], r["configuration"] or ""): r
            for r in document["reference"]["rows"]}


def test_reference_join_exact_differences(runs: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    plain = report_json(capsys, str(runs), "--no-files")
    document = report_json(capsys, str(runs), "--no-files", "--reference", "sener2018_table3")
    assert document["rows"] == plain["rows"]  # published numbers change no rank, no Δm%
    rows = reference_rows(document)
    equal = rows[("uniform scaling", "left", "equal")]
    half = 4.302652730 * 1.0 / math.sqrt(3)  # in %: 96, 97, 98 (sd 1)
    assert equal["published"] == 96.46 and equal["ours_mean"] == pytest.approx(97.0)
    assert equal["difference"] == pytest.approx(97.0 - 96.46)
    assert (equal["ours_ci95_lo"], equal["ours_ci95_hi"]) == (pytest.approx(97 - half),
                                                               pytest.approx(97 + half))
    assert equal["ours_std"] == pytest.approx(1.0) and equal["ours_n"] == 3
    # MGDA-UB is mgda with params=representation only (not the params=shared run)
    ub = [r for r in document["reference"]["rows"] if r["method"] == "MGDA-UB"]
    assert {r["configuration"] for r in ub} == {"mgda params=representation"}
    right = rows[("MGDA-UB", "right", "mgda params=representation")]
    assert right["difference"] == pytest.approx(94.0 - 95.90)
    stl = rows[("single task", "right", "single_task data.only=right")]
    assert stl["difference"] == pytest.approx(95.5 - 95.90)
    assert ("single task", "right", "single_task data.only=left") not in rows
    missing = rows[("Kendall et al. (UW)", "left", "")]
    assert missing["ours_mean"] is None and missing["difference"] is None


def test_reference_average_accuracy_and_delta_m_sign(runs: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    kurin = reference_rows(report_json(capsys, str(runs), "--no-files", "--reference",
                                       "kurin2022_multimnist"))
    average = kurin[("unitary scalarization (equal)", "average accuracy", "equal")]
    per_run = [95.5, 95.5, 97.0]  # mean of left and right per seed, in %
    assert average["ours_mean"] == pytest.approx(statistics.fmean(per_run))
    assert average["ours_std"] == pytest.approx(statistics.stdev(per_run))
    assert average["difference"] == pytest.approx(statistics.fmean(per_run) - 94.76)
    epoch = kurin[("unitary scalarization (equal)", "epoch time", "equal")]
    assert epoch["ours_mean"] is None  # no steps_per_epoch in these metrics.json

    fashion_mnist = make_study(runs.parent / "fm", "multifashion_mnist")  # Recon's data
    document = report_json(capsys, str(fashion_mnist), "--no-files", "--reference",
                           "shi2023_recon_table1")
    equal = by_label(document)["equal"]
    recon = reference_rows(document)[("joint training (equal)", "Δm%", "equal")]
    assert recon["ours_mean"] == pytest.approx(-equal["delta_m_pct"])  # the paper's sign
    assert recon["difference"] == pytest.approx(-equal["delta_m_pct"] - (-0.94))


def test_reference_section_is_labelled_and_filtered_by_data(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(runs), "--reference", "phan2022_fmtl_table1"]) == 0
    printed = capsys.readouterr().out
    main_table, section = printed.split("## Published: `phan2022_fmtl_table1`")
    assert "beside our runs; not in the ranks or Δm% above" in section
    assert "| method (published) |" in section and "| published |" in section
    assert "published" not in main_table.lower()
    assert "Phan et al." in section and "Protocol (data=multimnist)" in section
    assert "data=multifashion" not in section  # only the protocol of the runs' data
    assert "| 95.62     |" in section  # MGDA, MultiMNIST T1
    assert (runs / "report.md").read_text() == printed
    with (runs / "reference_phan2022_fmtl_table1.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert {line["data"] for line in lines} == {"multimnist"}
    stl = next(line for line in lines if line["configuration"] == "single_task data.only=left")
    assert float(stl["difference"]) == pytest.approx(97.5 - 95.33)

    # runs on other data than the table's: its numbers, beside none of ours (not comparable)
    document = report_json(capsys, str(runs), "--no-files", "--reference", "shi2023_recon_table1")
    note = document["reference"]["note"]
    assert note == ("Note: these runs use data=multimnist; the table's protocols are for "
                    "data=multifashion_mnist, so none of them is put beside these numbers.")
    rows = document["reference"]["rows"]
    assert rows and all(r["configuration"] is None and r["difference"] is None for r in rows)


def test_reference_matches_configurations_by_data(runs: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Runs on two data configs: each published number is compared with the runs on its own,
    and only with the variant the table names (Phan's MGDA names none: mtlbench's default, on
    the shared parameters; MGDA-UB on the representation is another method)."""
    make_run(runs, "fm/0", "mgda", 0, {"left": 0.88, "right": 0.97}, data="multifashion_mnist",
             params={"params": "shared"}, overrides=["data=multifashion_mnist"])
    rows = report_json(capsys, str(runs), "--no-files", "--reference",
                       "phan2022_fmtl_table1")["reference"]["rows"]
    assert {r["data"] for r in rows} == {"multimnist", "multifashion_mnist"}
    mgda = {(r["data"], r["task"], r["configuration"]) for r in rows if r["method"] == "MGDA"}
    fm = "mgda data=multifashion_mnist params=shared"
    assert mgda == {("multimnist", t, "mgda params=shared") for t in ("T1", "T2")} | {
        ("multifashion_mnist", "T1", fm), ("multifashion_mnist", "T2", fm)}
    t1 = next(r for r in rows if r["configuration"] == fm and r["task"] == "T1")
    assert t1["our_task"] == "right" and t1["difference"] == pytest.approx(97.0 - 97.24)


def test_list_references(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--reference", "list"], ["--list-references"]):
        assert main(args) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in lines] == references.names()
        assert "Sener & Koltun" in lines[references.names().index("sener2018_table3")]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_unknown_reference_is_one_line_exit_1_nothing_written(runs: Path) -> None:
    assert main([str(runs), "--reference", "sener2018_table3"]) == 0
    before = snapshot(runs)
    done = subprocess.run([sys.executable, "-m", "mtlbench.cli", "report", str(runs),
                           "--reference", "nope"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("mtlbench report: unknown reference `nope`; accepted: "
                           f"{', '.join(references.names())}, list.\n")
    assert snapshot(runs) == before


def test_a_setting_only_some_runs_have_shows_in_the_label(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A strategy setting added between runs splits the configuration, and the labels say so."""
    make_run(tmp_path, "0", "mgda", 0, {"left": 0.9}, params={"params": "shared"})
    make_run(tmp_path, "1", "mgda", 1, {"left": 0.8}, params={"params": "shared", "new": 0.0})
    assert set(by_label(report_json(capsys, str(tmp_path), "--no-files"))) == {
        "mgda", "mgda new=0"}


@pytest.mark.parametrize("strategy", sorted(p.stem for p in (REPO / "conf" / "strategy")
                                            .glob("*.yaml")))
def test_the_reports_strategy_defaults_are_what_hydra_composes(strategy: str) -> None:
    """The report reads each strategy's settings without Hydra (it imports no training code);
    they must be exactly the composed config's (defaults lists, stacked loss weightings)."""
    from mtlbench.report import _flatten, strategy_defaults

    composed = OmegaConf.to_container(compose_config([f"strategy={strategy}"]).strategy)
    assert strategy_defaults(strategy) == _flatten(composed, "strategy")


def test_a_published_method_is_not_matched_to_another_variant(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CR-MOGM, a stacked loss weighting, or PCGrad on the representation are not the published
    MGDA-UB / PCGrad: no difference is printed beside them."""
    make_run(runs, "v/0", "mgda", 0, {"left": 0.5, "right": 0.5},
             params={"params": "representation", "cr_mogm": 0.5})
    make_run(runs, "v/1", "mgda", 0, {"left": 0.5, "right": 0.5},
             params={"params": "representation", "loss_weighting": {
                 "_target_": "mtlbench.strategies.uw.UW", "init": 0.0, "lr": None}})
    make_run(runs, "v/2", "pcgrad", 0, {"left": 0.5, "right": 0.5},
             params={"params": "representation"})
    make_run(runs, "v/3", "pcgrad", 0, {"left": 0.9, "right": 0.9})
    for table in ("sener2018_table3", "kurin2022_multimnist"):
        rows = report_json(capsys, str(runs), "--no-files", "--reference", table)["reference"]
        matched = {r["configuration"] for r in rows["rows"] if r["method"].startswith(
            ("MGDA", "PCGrad"))}
        assert not any("cr_mogm=0.5" in c or "loss_weighting" in c for c in matched), matched
        if table == "kurin2022_multimnist":
            assert "pcgrad params=shared" in matched
            assert "pcgrad params=representation" not in matched


#: The preset that runs each table's protocol (conf/experiment/), where there is one.
PRESET_OF = {"sener2018_table3": "sk_multimnist", "kurin2022_multimnist": "kurin_multimnist",
             "shi2023_recon_table1": "recon_fashion_mnist"}


@pytest.mark.parametrize("name", references.names())
def test_every_tables_protocol_names_real_settings_and_its_preset_runs_them(name: str) -> None:
    from mtlbench.report import Row, Run, protocol_differences

    settings = references.protocol(name)
    assert settings, name
    preset = PRESET_OF.get(name, "moo_multifashion")  # (Phan's: no preset; its data settings)
    config = result_config(OmegaConf.to_container(compose_config([f"experiment={preset}"]),
                                                  resolve=True))
    assert set(settings) <= set(config), set(settings) - set(config)
    run = Run(path=Path("x"), status="finished", config=config)
    differences = protocol_differences(Row("x", "equal", {}, [0], {}, members=[run]), settings)
    if name in PRESET_OF:
        assert differences == [], differences
    else:  # moo_multifashion trains LeNet where Phan et al. train ResNet-18
        assert differences == ["model._target_=mtlbench.models.lenet.LeNetBackbone (paper: "
                               "mtlbench.models.resnet.ResNet18Backbone)"]


def test_the_settings_a_compared_configuration_runs_differently_are_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A difference of means beside a run of another protocol says how it differs."""
    base = result_config(OmegaConf.to_container(compose_config(["experiment=sk_multimnist"]),
                                                resolve=True))
    for name, changes in (("paper", {}), ("short", {"trainer.epochs": 30,
                                                     "data.source": "mnist5k"})):
        config = {**base, "seed": 0, **changes}
        make_run(tmp_path, name, "equal", 0, {"left": 0.9, "right": 0.9},
                 overrides=[f"trainer.epochs={config['trainer.epochs']}"],
                 extra={"config": config})
    assert main([str(tmp_path), "--no-files", "--reference", "sener2018_table3"]) == 0
    out = capsys.readouterr().out
    assert "- `equal trainer.epochs=100`: the paper's settings" in out
    assert ("- `equal trainer.epochs=30`: data.source=mnist5k (paper: torchvision or idx); "
            "trainer.epochs=30 (paper: 100)") in out


def test_epoch_times_beside_a_papers_gpu_say_where_ours_were_timed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = result_config(OmegaConf.to_container(compose_config(["experiment=kurin_multimnist"]),
                                                  resolve=True))
    make_run(tmp_path, "0", "equal", 0, {"left": 0.9, "right": 0.9},
             extra={"config": {**config, "seed": 0}, "device": "cpu", "num_threads": 1,
                    "train_seconds": 10.0, "steps_per_epoch": 10})
    assert main([str(tmp_path), "--no-files", "--reference", "kurin2022_multimnist"]) == 0
    assert "- `equal`: timed on cpu, 1 thread" in capsys.readouterr().out
