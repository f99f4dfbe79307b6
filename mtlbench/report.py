"""``mtlbench report DIR [DIR ...]``: compare finished runs (table, Δm%, rank, md/csv/png, json).

Reads run directories from disk only (``metrics.json``, ``error.json``, ``.hydra/``); it never
imports the training code. A *job directory* is any directory holding ``metrics.json``,
``error.json`` or ``.hydra/``; it is ``finished`` (metrics.json), ``failed`` (error.json newer than
any metrics.json) or ``unfinished`` (neither). Runs are grouped into *configurations*: the strategy,
its hyperparameters (``.hydra/config.yaml``: ``strategy.*``) and every other override that is not
the seed. Settings that are the same for every run are shown once ("common"), not in every label.

Δm% (lower is better) compares a configuration's per-task mean metrics M_k with those of the
single-task baselines (``strategy=single_task data.only=<task>`` runs found in the same dirs):

    Δm% = (1/K) Σ_k (−1)^{δ_k} (M_k − M_stl,k) / M_stl,k × 100,
    δ_k = 1 if higher is better (accuracy), 0 otherwise (mse)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Override keys that never change what is learned (or name a preset); ignored for grouping.
IGNORED_KEYS = frozenset({"seed", "strategy", "experiment", "trainer.device", "trainer.num_threads",
                          "trainer.progress", "trainer.report_metric"})
#: Metrics where higher is better; every other metric (mse) is lower-is-better.
HIGHER_IS_BETTER = frozenset({"accuracy"})
#: The strategy whose runs are the Δm% baselines.
BASELINE_STRATEGY = "single_task"
GAMMA_KEY = "strategy.gamma"


class ReportError(Exception):
    """Bad input: printed as one line on stderr, exit status 1."""


# ----------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    """One job directory.

    Attributes:
        path: the job directory.
        status: ``finished``, ``failed`` or ``unfinished``.
        strategy: strategy name (``metrics.json`` or Hydra's choices), ``?`` if unknown.
        params: identifying settings: ``strategy.*`` hyperparameters and non-seed overrides.
        seed: the run's seed, if known.
        tasks: task → {"metric": name, "value": test value} (finished runs only).
        error: the failure message (failed runs only).
    """

    path: Path
    status: str
    strategy: str = "?"
    params: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None


def is_job_dir(path: Path) -> bool:
    """A directory that Hydra ran a job in (or that holds a job's results)."""
    return ((path / "metrics.json").is_file() or (path / "error.json").is_file()
            or (path / ".hydra").is_dir())


def find_job_dirs(root: Path) -> list[Path]:
    """Job directories under ``root`` (itself included), sorted; hidden folders are skipped."""
    found = [root] if is_job_dir(root) else []
    for child in sorted(p for p in root.rglob("*") if p.is_dir()):
        parts = child.relative_to(root).parts
        if not any(part.startswith(".") for part in parts) and is_job_dir(child):
            found.append(child)
    return found


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _flatten(node: Any, prefix: str) -> dict[str, str]:
    """Scalar leaves of a nested mapping as ``{"prefix.a.b": "value"}`` (``_target_`` skipped)."""
    if not isinstance(node, dict):
        return {prefix: _fmt_value(node)}
    flat: dict[str, str] = {}
    for key, value in node.items():
        if key != "_target_":
            flat.update(_flatten(value, f"{prefix}.{key}"))
    return flat


def _fmt_value(value: Any) -> str:
    """A config value as it would be written on the command line (floats: ±inf, 0.5, 1e-05)."""
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    return str(value)


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """``key=value`` task overrides → dict (``+``/``++`` prefixes dropped, deletions ignored)."""
    parsed: dict[str, str] = {}
    for line in lines:
        key, sep, value = str(line).lstrip("+").partition("=")
        if sep and not key.startswith(("~", "hydra.", "hydra/")):
            parsed[key] = value
    return parsed


def read_run(path: Path) -> Run:
    """Everything the report needs from one job directory."""
    overrides = parse_overrides(_load_yaml(path / ".hydra" / "overrides.yaml") or [])
    config = _load_yaml(path / ".hydra" / "config.yaml") or {}
    choices = ((_load_yaml(path / ".hydra" / "hydra.yaml") or {}).get("hydra", {})
               .get("runtime", {}).get("choices", {}))
    run = Run(path=path, status="unfinished",
              strategy=str(overrides.get("strategy") or choices.get("strategy") or "?"))
    run.params = {k: v for k, v in overrides.items()
                  if k not in IGNORED_KEYS and not k.startswith("strategy.")}
    if isinstance(config.get("strategy"), dict):
        run.params.update(_flatten(config["strategy"], "strategy"))
    seed = overrides.get("seed", config.get("seed"))
    run.seed = int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else None
    _read_results(run)
    return run


def _read_results(run: Run) -> None:
    """Fill status, metrics or error from ``metrics.json`` / ``error.json``."""
    metrics_file, error_file = run.path / "metrics.json", run.path / "error.json"
    if error_file.is_file() and (not metrics_file.is_file()
                                 or error_file.stat().st_mtime >= metrics_file.stat().st_mtime):
        run.status = "failed"
        try:
            err = json.loads(error_file.read_text())
            run.error = f"{err.get('type', 'Error')}: {err.get('error', '')}"
        except (OSError, ValueError, AttributeError) as exc:
            run.error = f"unreadable error.json ({exc})"
        return
    if not metrics_file.is_file():
        return
    try:
        metrics = json.loads(metrics_file.read_text())
        run.strategy = str(metrics.get("strategy", run.strategy))
        run.seed = int(metrics.get("seed", run.seed))
        run.tasks = {name: _main_metric(values) for name, values in metrics["tasks"].items()}
        run.status = "finished"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        run.status, run.error = "failed", f"unreadable metrics.json ({type(exc).__name__}: {exc})"


def _main_metric(values: dict[str, Any]) -> dict[str, Any]:
    """The task's test metric: accuracy for classification, mse for regression."""
    name = "accuracy" if values.get("kind") == "classification" or "accuracy" in values else "mse"
    return {"metric": name, "value": float(values[name])}


def collect_runs(dirs: Sequence[Path]) -> list[Run]:
    """Every job under ``dirs``; :class:`ReportError` if a dir is missing or holds no job."""
    runs: list[Run] = []
    for root in dirs:
        if not root.is_dir():
            raise ReportError(f"`{root}` is not a directory.")
        runs.extend(read_run(path) for path in find_job_dirs(root))
    if not runs:
        where = ", ".join(f"`{d}`" for d in dirs)
        raise ReportError(f"no runs (metrics.json, error.json or .hydra/) found under {where}.")
    return runs


# ----------------------------------------------------------------------------- aggregation
@dataclass
class Row:
    """One configuration: seeds aggregated."""

    label: str
    strategy: str
    params: dict[str, str]
    seeds: list[int | None]
    tasks: dict[str, dict[str, Any]]  # task → metric, mean, std, values
    delta_m: float | None = None
    rank: int | None = None

    @property
    def is_baseline(self) -> bool:
        return self.strategy == BASELINE_STRATEGY


def common_params(runs: Sequence[Run]) -> dict[str, str]:
    """Non-strategy settings shared (same value) by every run."""
    keys = set.intersection(*(set(r.params) for r in runs)) if runs else set()
    return {k: runs[0].params[k] for k in sorted(keys)
            if not k.startswith("strategy.") and len({r.params[k] for r in runs}) == 1}


def varying_strategy_params(runs: Sequence[Run]) -> dict[str, set[str]]:
    """Per strategy, the ``strategy.*`` keys whose value differs between its runs (e.g. ``gamma``
    in a γ sweep); the others are that strategy's fixed defaults and stay out of its label."""
    values: dict[str, dict[str, set[str]]] = {}
    for run in runs:
        for key, value in run.params.items():
            if key.startswith("strategy."):
                values.setdefault(run.strategy, {}).setdefault(key, set()).add(value)
    return {strategy: {k for k, v in keys.items() if len(v) > 1}
            for strategy, keys in values.items()}


def label_of(strategy: str, params: dict[str, str], common: dict[str, str],
             varying: dict[str, set[str]] | None = None) -> str:
    """``strategy key=value ...`` with the common settings left out and, when ``varying`` is given,
    only the strategy hyperparameters that vary between that strategy's runs."""
    own = [f"{k.removeprefix('strategy.')}={v}" for k, v in sorted(params.items())
           if k not in common and (varying is None or not k.startswith("strategy.")
                                   or k in varying.get(strategy, set()))]
    return " ".join([strategy, *own])


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: Sequence[Run], common: dict[str, str]) -> list[Row]:
    """Group finished runs by (strategy, params) and average each task's metric over seeds."""
    varying = varying_strategy_params([r for r in runs if r.status == "finished"])
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Run]] = {}
    for run in runs:
        if run.status == "finished":
            groups.setdefault((run.strategy, tuple(sorted(run.params.items()))), []).append(run)
    rows = []
    for (strategy, items), members in groups.items():
        params = dict(items)
        tasks: dict[str, dict[str, Any]] = {}
        for member in members:
            for task, m in member.tasks.items():
                entry = tasks.setdefault(task, {"metric": m["metric"], "values": []})
                entry["values"].append(m["value"])
        for entry in tasks.values():
            entry["mean"], entry["std"] = statistics.fmean(entry["values"]), std(entry["values"])
        rows.append(Row(label_of(strategy, params, common, varying), strategy, params,
                        sorted((m.seed for m in members), key=lambda s: (s is None, s or 0)),
                        tasks))
    return sorted(rows, key=lambda r: r.label)


def baselines(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Single-task baseline per task: metric and mean over every single-task run of that task."""
    values: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.is_baseline:
            for task, entry in row.tasks.items():
                base = values.setdefault(task, {"metric": entry["metric"], "values": []})
                base["values"].extend(entry["values"])
    return {task: {"metric": b["metric"], "mean": statistics.fmean(b["values"]),
                   "configs": sum(task in r.tasks for r in rows if r.is_baseline)}
            for task, b in values.items()}


def delta_m(tasks: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> float | None:
    """Δm% of one configuration against the baselines; None unless every task has a baseline."""
    if not tasks or any(t not in base or base[t]["mean"] == 0 for t in tasks):
        return None
    terms = []
    for task, entry in tasks.items():
        sign = -1.0 if entry["metric"] in HIGHER_IS_BETTER else 1.0
        terms.append(sign * (entry["mean"] - base[task]["mean"]) / base[task]["mean"] * 100.0)
    return statistics.fmean(terms)


def rank_rows(rows: Sequence[Row], base: dict[str, dict[str, Any]]) -> None:
    """Set Δm% on every row and rank (1 = lowest Δm%) the multi-task rows that have one."""
    for row in rows:
        row.delta_m = delta_m(row.tasks, base)
    ranked = sorted((r for r in rows if not r.is_baseline and r.delta_m is not None
                     and math.isfinite(r.delta_m)), key=lambda r: r.delta_m)
    for position, row in enumerate(ranked, start=1):
        row.rank = position


# ----------------------------------------------------------------------------- formatting
def fmt_number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def fmt_cell(entry: dict[str, Any] | None) -> str:
    """``mean ± std`` of one task in one row ("—" when the row lacks the task)."""
    if entry is None:
        return "—"
    return f"{fmt_number(entry['mean'])} ± {fmt_number(entry['std'])}"


def task_columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(task, metric) in first-seen order."""
    seen: dict[str, str] = {}
    for row in rows:
        for task, entry in row.tasks.items():
            seen.setdefault(task, entry["metric"])
    return list(seen.items())


def table_rows(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main table, best rank first, baselines last."""
    columns = task_columns(rows)
    header = ["configuration", "seeds",
              *[f"{t} {m} {'↑' if m in HIGHER_IS_BETTER else '↓'}" for t, m in columns],
              "Δm% ↓", "rank"]
    ordered = sorted(rows, key=lambda r: (r.is_baseline, r.rank is None, r.rank or 0, r.label))
    cells = [[row.label, str(len(row.seeds)), *[fmt_cell(row.tasks.get(t)) for t, _ in columns],
              "n/a" if row.delta_m is None else f"{row.delta_m:+.2f}",
              "baseline" if row.is_baseline else str(row.rank or "—")] for row in ordered]
    return header, cells


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    """A GitHub markdown table, columns padded so it reads in a terminal too."""
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])


def problems_section(runs: Sequence[Run]) -> str:
    """Failed and unfinished jobs, one line each (never silently dropped)."""
    bad = [r for r in runs if r.status != "finished"]
    if not bad:
        return ""
    lines = [f"## Failed or unfinished jobs ({len(bad)})", ""]
    lines += [f"- **{r.status}** `{r.path}`" + (f": {r.error}" if r.error else "") for r in bad]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], header: list[str], cells: list[list[str]],
                    runs: Sequence[Run], plots: Sequence[Path]) -> str:
    """The full report.md text."""
    counts = report["counts"]
    parts = ["# mtlbench report", "",
             f"Runs: {counts['finished']} finished, {counts['failed']} failed, "
             f"{counts['unfinished']} unfinished; {len(cells)} configurations. "
             "Metrics: test split, mean ± sample std over seeds.", ""]
    if report["common"]:
        common = ", ".join(f"`{k}={v}`" for k, v in report["common"].items())
        parts += [f"Common settings: {common}", ""]
    if not report["baselines"]:
        parts += ["Δm%: n/a (no `strategy=single_task data.only=<task>` runs in these dirs).", ""]
    parts += [markdown_table(header, cells), ""]
    problems = problems_section(runs)
    if problems:
        parts += [problems, ""]
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts).rstrip() + "\n"


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    """One line per configuration: label, params, seeds, per-task mean/std, Δm%, rank."""
    columns = task_columns(rows)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["configuration", "strategy", "params", "n_seeds", "seeds",
                         *[f"{t}/{m}/{s}" for t, m in columns for s in ("mean", "std")],
                         "delta_m_pct", "rank"])
        for row in rows:
            stats = []
            for task, _ in columns:
                entry = row.tasks.get(task)
                stats += ["", ""] if entry is None else [entry["mean"], entry["std"]]
            writer.writerow([row.label, row.strategy, json.dumps(row.params, sort_keys=True),
                             len(row.seeds), " ".join(map(str, row.seeds)), *stats,
                             "" if row.delta_m is None else row.delta_m,
                             "baseline" if row.is_baseline else (row.rank or "")])


def as_json(report: dict[str, Any], rows: Sequence[Row], runs: Sequence[Run]) -> dict[str, Any]:
    """The ``--format json`` document."""
    return {
        **report,
        "rows": [{"label": r.label, "strategy": r.strategy, "params": r.params, "seeds": r.seeds,
                  "tasks": {t: {k: e[k] for k in ("metric", "mean", "std", "values")}
                            for t, e in r.tasks.items()},
                  "delta_m_pct": r.delta_m, "rank": r.rank, "baseline": r.is_baseline}
                 for r in rows],
        "problems": [{"path": str(r.path), "status": r.status, "error": r.error}
                     for r in runs if r.status != "finished"],
    }


def strict_json(node: Any) -> Any:
    """``node`` with non-finite floats replaced by None, so the output is standard JSON."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {k: strict_json(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [strict_json(v) for v in node]
    return node


# ----------------------------------------------------------------------------- plots
def gamma_value(text: str) -> float:
    """γ from its config text (``inf``, ``-inf``, ``0.5``)."""
    return float(text)


def plot_gamma(path: Path, rows: Sequence[Row]) -> bool:
    """Metric vs γ per task for the generalized-mean rows (seeds as dots, mean ± std as a line).

    γ is put on a categorical axis (sorted, ±inf at the ends), so infinite γ needs no fake value.
    Returns False (and writes nothing) when fewer than two γ values were run.
    """
    sweep = [r for r in rows if GAMMA_KEY in r.params]
    gammas = sorted({gamma_value(r.params[GAMMA_KEY]) for r in sweep})
    if len(gammas) < 2:
        return False
    import matplotlib.pyplot as plt

    columns = task_columns(sweep)
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    lines: dict[str, list[Row]] = {}
    for row in sweep:
        rest = {k: v for k, v in row.params.items() if k != GAMMA_KEY}
        lines.setdefault(label_of(row.strategy, rest, {}), []).append(row)
    for ax, (task, metric) in zip(axes[0], columns, strict=True):
        for name, members in lines.items():
            members = sorted((m for m in members if task in m.tasks),
                             key=lambda m: gamma_value(m.params[GAMMA_KEY]))
            xs = [gammas.index(gamma_value(m.params[GAMMA_KEY])) for m in members]
            means = [m.tasks[task]["mean"] for m in members]
            stds = [m.tasks[task]["std"] for m in members]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
            for x, member in zip(xs, members, strict=True):
                values = member.tasks[task]["values"]
                ax.scatter([x] * len(values), values, s=10, alpha=0.4, color="gray")
        ax.set_xticks(range(len(gammas)), [_fmt_value(g) for g in gammas])
        ax.set_xlabel("γ")
        ax.set_title(f"{task}: test {metric} {'↑' if metric in HIGHER_IS_BETTER else '↓'}")
    if len(lines) > 1:
        axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pareto_front(points: Sequence[tuple[float, float]], higher: tuple[bool, bool]) -> list[int]:
    """Indices of the non-dominated points (each axis maximized or minimized per ``higher``)."""
    signed = [(x if higher[0] else -x, y if higher[1] else -y) for x, y in points]
    return [i for i, (x, y) in enumerate(signed)
            if not any(a >= x and b >= y and (a > x or b > y) for a, b in signed)]


def plot_pareto(path: Path, rows: Sequence[Row], base: dict[str, dict[str, Any]],
                task_a: str, task_b: str) -> bool:
    """Task-vs-task scatter of every multi-task configuration (mean ± std), Pareto front joined,
    single-task baselines as dashed lines. False when no row has both tasks."""
    both = [r for r in rows if task_a in r.tasks and task_b in r.tasks]
    if not both:
        return False
    import matplotlib.pyplot as plt

    metric_a, metric_b = both[0].tasks[task_a]["metric"], both[0].tasks[task_b]["metric"]
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    points = [(r.tasks[task_a]["mean"], r.tasks[task_b]["mean"]) for r in both]
    for row, (x, y) in zip(both, points, strict=True):
        ax.errorbar(x, y, xerr=row.tasks[task_a]["std"], yerr=row.tasks[task_b]["std"],
                    marker="o", capsize=2, alpha=0.8)
        ax.annotate(row.label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = sorted(points[i] for i in pareto_front(
        points, (metric_a in HIGHER_IS_BETTER, metric_b in HIGHER_IS_BETTER)))
    ax.plot(*zip(*front, strict=True), color="black", linewidth=1, label="Pareto front")
    if task_a in base:
        ax.axvline(base[task_a]["mean"], linestyle="--", color="gray", label="single-task")
    if task_b in base:
        ax.axhline(base[task_b]["mean"], linestyle="--", color="gray")
    ax.set_xlabel(f"{task_a} test {metric_a} {'↑' if metric_a in HIGHER_IS_BETTER else '↓'}")
    ax.set_ylabel(f"{task_b} test {metric_b} {'↑' if metric_b in HIGHER_IS_BETTER else '↓'}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(out: Path, rows: Sequence[Row], base: dict[str, dict[str, Any]],
                pareto: Sequence[str] | None) -> list[Path]:
    """The PNG files that apply to these rows; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    if plot_gamma(out / "gamma.png", rows):
        written.append(out / "gamma.png")
    multi = [r for r in rows if len(r.tasks) >= 2]
    names = [t for t, _ in task_columns(multi)]
    task_a, task_b = pareto if pareto else (names[:2] if len(names) >= 2 else (None, None))
    if task_a and task_b and plot_pareto(out / "pareto.png", multi, base, task_a, task_b):
        written.append(out / "pareto.png")
    return written


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlbench report",
        description="Compare runs: per-task test metrics (mean ± std over seeds), Δm%% versus the "
                    "single-task baselines found in the dirs, rank; writes report.md, report.csv "
                    "and PNG plots.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="sweep or run directories, searched recursively")
    parser.add_argument("--out", type=Path, help="where to write the files (default: first DIR)")
    parser.add_argument("--pareto", nargs=2, metavar=("TASK_A", "TASK_B"),
                        help="tasks of the Pareto scatter (default: the first two)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="stdout format (default: table)")
    parser.add_argument("--no-files", action="store_true", help="print only; write nothing")
    return parser


def make_report(dirs: Sequence[Path], out: Path | None, pareto: Sequence[str] | None,
                write: bool) -> tuple[str, dict[str, Any]]:
    """Read, aggregate, write the files; returns (markdown text, json document)."""
    runs = collect_runs(dirs)
    finished = [r for r in runs if r.status == "finished"]
    common = common_params(finished)
    rows = aggregate(finished, common)
    base = baselines(rows)
    rank_rows(rows, base)
    known = {t for t, _ in task_columns(rows)}
    for task in pareto or ():
        if task not in known:
            raise ReportError(f"`--pareto {task}` names no task of these runs; "
                              f"the tasks are {', '.join(sorted(known)) or 'none'}.")
    report = {"dirs": [str(d) for d in dirs], "common": common,
              "counts": {s: sum(r.status == s for r in runs)
                         for s in ("finished", "failed", "unfinished")},
              "baselines": base, "files": []}
    header, cells = table_rows(rows)
    plots: list[Path] = []
    out = out or dirs[0]
    if write:
        out.mkdir(parents=True, exist_ok=True)
        plots = write_plots(out, rows, base, pareto) if rows else []
        write_csv(out / "report.csv", rows)
        report["files"] = [str(p) for p in (out / "report.md", out / "report.csv", *plots)]
    markdown = render_markdown(report, header, cells, runs, plots)
    if write:
        (out / "report.md").write_text(markdown)
    return markdown, as_json(report, rows, runs)


def main(argv: list[str]) -> int:
    """``mtlbench report``: 0 on success, 1 on bad input (one line on stderr, no traceback)."""
    args = build_parser().parse_args(argv)
    try:
        markdown, document = make_report(args.dirs, args.out, args.pareto, not args.no_files)
    except (ReportError, OSError) as exc:
        print(f"mtlbench report: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(strict_json(document), indent=2, default=str))
    else:
        print(markdown, end="")
    return 0
