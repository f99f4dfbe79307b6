"""``mtlbench report DIR [DIR ...]``: compare finished runs (table, Δm%, rank, md/csv/png, json).

Reads run directories from disk only (``metrics.json``, ``error.json``, ``.hydra/``); it never
imports the training code, torch or (unless it draws plots) matplotlib. A *job directory* is any
directory holding ``metrics.json``, ``error.json`` or ``.hydra/``; it is ``finished`` (a readable
metrics.json, even beside an error.json: a later rejected attempt does not undo a result),
``failed`` (error.json, or an unreadable metrics.json) or ``unfinished`` (neither). Unknown keys of
metrics.json are ignored; a null (non-finite) test metric is left out of that task's mean and the
run is listed under problems. Runs are grouped into *configurations*: the strategy and every
setting that changes what is learned except the seed, as the run recorded them (``config`` of
metrics.json: the values the fingerprint of :mod:`mtlbench.rundir` hashes), so two presets, two
spellings of one value or a dir holding only metrics.json never merge or split configurations.
Runs whose metrics.json predates ``config`` are grouped by their strategy, its hyperparameters
(``.hydra/config.yaml``: ``strategy.*``) and every other override that is not the seed. Each seed
counts once per configuration (the newest metrics.json when a seed was run twice; the others are
listed under problems). A label names the strategy, the hyperparameters that vary and the
overrides not common to every run (settings the same for every run are shown once, "common");
configurations that would still read the same get the settings that tell them apart.

Δm% (lower is better) compares a configuration's per-task mean metrics M_k with those of the
single-task baselines (``strategy=single_task data.only=<task>`` runs found in the same dirs) run
with the configuration's own settings (every recorded setting but the strategy's, the seed,
``data.only`` and the gradient engine's, which a single-task run does not use); a configuration
without such baselines gets no Δm%, and the report says so:

    Δm% = (1/K) Σ_k (−1)^{δ_k} (M_k − M_stl,k) / M_stl,k × 100,
    δ_k = 1 if higher is better (accuracy), 0 otherwise (mse)

Each mean comes with its sample std and a 95% confidence interval (Student t, n − 1 degrees of
freedom: mean ± t_{0.975, n−1} · sd / √n; none for a single seed), and each configuration with its
training time per step (``train_seconds / steps`` of metrics.json, mean over seeds) and, when runs
picked their test model on validation (``trainer.select=best_val``: ``selected`` in metrics.json),
the selected steps. ``--reference NAME`` puts a table of published numbers (shipped with mtlbench,
see :mod:`mtlbench.references`) beside the runs, labelled "published"; it never enters the ranks
or Δm%.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from mtlbench import references, segments
from mtlbench.references import Published

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Override keys left out of labels (and, for runs without a recorded ``config``, of grouping):
#: they never change what is learned, or name a preset (``experiment``: what it sets is in the
#: recorded config; its name tells configurations apart only where their labels collide).
IGNORED_KEYS = frozenset({"seed", "strategy", "experiment", "trainer.device",
                          "trainer.num_threads", "trainer.progress", "trainer.report_metric"})
PRESET_KEY = "experiment"
#: Recorded settings a single-task baseline need not share with the configuration it is compared
#: with: besides its strategy (``strategy.*``), seed and task (``data.only``), the gradient
#: engine's, which no loss-side strategy uses.
BASELINE_FREE = ("seed", "data.only", "trainer.gradient_engine", "trainer.linear_gramian")
#: The settings of a configuration whose metrics.json has no ``config`` (written by an older
#: mtlbench), where they tell configurations apart.
UNRECORDED, RECORDED = {"config": "unrecorded"}, {"config": "recorded"}
#: Metrics where higher is better; every other metric (mse) is lower-is-better.
HIGHER_IS_BETTER = frozenset({"accuracy"})
#: The strategy whose runs are the Δm% baselines.
BASELINE_STRATEGY = "single_task"
GAMMA_KEY = "strategy.gamma"
#: Most entries per column of a plot's legend (the key beside the axes).
KEY_ROWS = 40
#: metrics.json keys of the training time: wall-clock seconds of the training loop over ``steps``
#: steps (optional; ``steps_per_epoch``, if present, also gives seconds per epoch).
TIME_KEY, STEPS_KEY, EPOCH_KEY = "train_seconds", "steps", "steps_per_epoch"
#: metrics.json key of the model selection (``trainer.select=best_val``): {"step", "criterion"}.
SELECTED_KEY = "selected"
#: ``--reference`` value that lists the shipped reference tables.
LIST_REFERENCES = "list"


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
        tasks: task → {"metric": name, "value": test value, None if non-finite} (finished runs).
        error: the failure message (failed runs only).
        mtime: modification time of metrics.json (finished runs; picks among duplicate seeds).
        data: the data config (``data=`` override or Hydra's choices), None if unknown.
        seconds_per_step: ``train_seconds / steps`` of metrics.json, None when not recorded or
            when the run's segments ran in different ways (:func:`mtlbench.segments.uniform`).
        steps_per_epoch: ``steps_per_epoch`` of metrics.json, None when not recorded.
        selected: ``selected`` of metrics.json ({"step": int, "criterion": str}), None if absent.
        config: ``config`` of metrics.json (every setting that changes what is learned), None
            when not recorded.
        timing: how the run was timed: metrics.json's ``device``, ``num_threads``,
            ``optimizer_implementation`` and ``gradient_engine`` (JSON text each).
        preset: the ``experiment=`` preset it ran (override or Hydra's choices), None if none.
    """

    path: Path
    status: str
    strategy: str = "?"
    params: dict[str, str] = field(default_factory=dict)
    #: ``strategy.*`` keys set on the command line (shown in the label, e.g. ``params=...``).
    explicit: set[str] = field(default_factory=set)
    seed: int | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    mtime: float = 0.0
    data: str | None = None
    seconds_per_step: float | None = None
    steps_per_epoch: int | None = None
    selected: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    timing: tuple[str, ...] = ()
    preset: str | None = None

    @property
    def config_key(self) -> tuple[Any, ...]:
        """What identifies the run's configuration: the strategy and its recorded config but the
        seed; without one, the strategy and sorted params."""
        if self.config is not None:
            return self.strategy, "config", _frozen(self.config, lambda key: key != "seed")
        return self.strategy, "params", tuple(sorted(self.params.items()))

    @property
    def baseline_key(self) -> tuple[tuple[str, str], ...] | None:
        """The recorded settings its single-task baselines must share (:data:`BASELINE_FREE`
        and ``strategy.*`` left out); None without a recorded config."""
        if self.config is None:
            return None
        return _frozen(self.config, lambda key: not key.startswith("strategy.")
                       and key not in BASELINE_FREE)

    @property
    def nonfinite(self) -> list[str]:
        """``task metric`` of each test metric that is null or non-finite."""
        return [f"{t} {m['metric']}" for t, m in self.tasks.items() if m["value"] is None]


def _frozen(config: dict[str, Any], keep: Any) -> tuple[tuple[str, str], ...]:
    """The ``keep(key)`` entries of a recorded config, hashable (values as JSON text)."""
    return tuple(sorted((key, json.dumps(value, sort_keys=True, default=str))
                        for key, value in config.items() if keep(key)))


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


def _flatten(node: Any, prefix: str, top: bool = True) -> dict[str, str]:
    """Scalar leaves of a nested mapping as ``{"prefix.a.b": "value"}`` (the top level's
    ``_target_`` skipped: a nested one names a stacked strategy; an empty mapping is the value
    None, as a recorded config holds it)."""
    if not isinstance(node, dict) or not node:
        return {prefix: _fmt_value(None if isinstance(node, dict) else node)}
    flat: dict[str, str] = {}
    for key, value in node.items():
        if not (top and key == "_target_"):
            flat.update(_flatten(value, f"{prefix}.{key}", top=False))
    return flat


def _fmt_value(value: Any) -> str:
    """A config value as it would be written on the command line (floats: see :func:`fmt_float`)."""
    return fmt_float(value) if isinstance(value, float) else str(value)


def fmt_float(value: float) -> str:
    """The shortest ``%g`` form (at least 6 significant digits) that reads back as ``value``:
    0.5, 1000, 1e+08, 1e-08, 123456789, 0.30000000000000004, inf, -inf."""
    if not math.isfinite(value):
        return str(value)
    for digits in range(6, 17):
        text = f"{value:.{digits}g}"
        if float(text) == value:
            return text
    return f"{value:.17g}"


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
    data = overrides.get("data") or choices.get("data")
    run.data = str(data) if data else None
    preset = overrides.get(PRESET_KEY) or choices.get(PRESET_KEY)
    run.preset = str(preset) if preset else None
    run.params = {k: v for k, v in overrides.items()
                  if k not in IGNORED_KEYS and not k.startswith("strategy.")}
    run.explicit = {k for k in overrides if k.startswith("strategy.")}
    if isinstance(config.get("strategy"), dict):
        run.params.update(_flatten(config["strategy"], "strategy"))
    seed = overrides.get("seed", config.get("seed"))
    run.seed = int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else None
    _read_results(run)
    return run


def _read_results(run: Run) -> None:
    """Fill status, metrics or error from ``metrics.json`` / ``error.json``: a readable
    metrics.json wins over any error.json (that is a later, rejected attempt's)."""
    metrics_file, error_file = run.path / "metrics.json", run.path / "error.json"
    problem = _read_metrics(run, metrics_file) if metrics_file.is_file() else None
    if run.status == "finished":
        return
    if error_file.is_file():
        run.status, run.error = "failed", _read_error(error_file)
        run.error += f"; {problem}" if problem else ""
    elif problem:
        run.status, run.error = "failed", problem


def _read_error(path: Path) -> str:
    """``Type: message`` of an error.json."""
    try:
        err = json.loads(path.read_text())
        return f"{err.get('type', 'Error')}: {err.get('error', '')}"
    except (OSError, ValueError, AttributeError) as exc:
        return f"unreadable error.json ({exc})"


def _read_metrics(run: Run, path: Path) -> str | None:
    """Set the run finished from a readable metrics.json (unknown keys ignored); else return why
    it is unreadable."""
    try:
        metrics = json.loads(path.read_text())
        tasks = {name: _main_metric(values) for name, values in metrics["tasks"].items()}
        seed = int(metrics.get("seed", run.seed))
        strategy = str(metrics.get("strategy", run.strategy))
        mtime = path.stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"unreadable metrics.json ({type(exc).__name__}: {exc})"
    run.status, run.tasks, run.seed, run.strategy, run.mtime = (
        "finished", tasks, seed, strategy, mtime)
    _read_extras(run, metrics)
    if isinstance(metrics.get("config"), dict):
        _use_config(run, metrics["config"])
    return None


def _use_config(run: Run, config: dict[str, Any]) -> None:
    """Take the run's settings from its recorded ``config``: the strategy's hyperparameters (also
    for a dir without ``.hydra/``), and each override's value as the config holds it
    (``optimizer.lr=1e-3`` and ``optimizer.lr=0.001`` are one setting)."""
    run.config = config
    params = {key: _fmt_value(config[key]) if key in config else value
              for key, value in run.params.items() if not key.startswith("strategy.")}
    params.update({key: _fmt_value(value) for key, value in config.items()
                   if key.startswith("strategy.") and key != "strategy._target_"})
    run.params = params


def _positive(value: Any) -> float | None:
    """``value`` as a finite positive float, else None (a missing or malformed key)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _read_extras(run: Run, metrics: dict[str, Any]) -> None:
    """Training time and model selection from metrics.json; absent or malformed: None."""
    seconds, steps = _positive(metrics.get(TIME_KEY)), _positive(metrics.get(STEPS_KEY))
    run.seconds_per_step = (seconds / steps if seconds is not None and steps
                            and segments.uniform(metrics) else None)  # one setting timed
    per_epoch = _positive(metrics.get(EPOCH_KEY))
    run.steps_per_epoch = int(per_epoch) if per_epoch else None
    selected = metrics.get(SELECTED_KEY)
    if isinstance(selected, dict) and isinstance(selected.get("step"), int):
        run.selected = {"step": selected["step"], "criterion": selected.get("criterion")}
    run.timing = tuple(json.dumps(metrics.get(key), sort_keys=True, default=str)
                       for key in segments.DESCRIBED_KEYS)


def _main_metric(values: dict[str, Any]) -> dict[str, Any]:
    """The task's test metric: accuracy for classification, mse for regression; its value is None
    when metrics.json has null (or a non-finite number) there."""
    name = "accuracy" if values.get("kind") == "classification" or "accuracy" in values else "mse"
    value = None if values[name] is None else float(values[name])
    return {"metric": name, "value": value if value is not None and math.isfinite(value) else None}


def collect_runs(dirs: Sequence[Path]) -> list[Run]:
    """Every job under ``dirs``; :class:`ReportError` if a dir is missing or holds no job."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for root in dirs:
        if not root.is_dir():
            raise ReportError(f"`{root}` is not a directory.")
        for path in find_job_dirs(root):
            if path.resolve() not in seen:  # a job under two of the dirs given is read once
                seen.add(path.resolve())
                runs.append(read_run(path))
    if not runs:
        where = ", ".join(f"`{d}`" for d in dirs)
        raise ReportError(f"no runs (metrics.json, error.json or .hydra/) found under {where}.")
    return runs


def drop_duplicate_seeds(runs: Sequence[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """One finished run per (configuration, seed): the one with the newest metrics.json (on equal
    times, the later path). Returns (kept runs in input order, [(dropped, kept instead)]).
    Runs of unknown seed are all kept."""
    best: dict[tuple[Any, ...], Run] = {}
    for run in runs:
        key = _seed_key(run)
        if key not in best or (run.mtime, str(run.path)) > (best[key].mtime, str(best[key].path)):
            best[key] = run
    chosen = {id(run) for run in best.values()}
    return ([r for r in runs if id(r) in chosen],
            [(r, best[_seed_key(r)]) for r in runs if id(r) not in chosen])


def _seed_key(run: Run) -> tuple[Any, ...]:
    return (*run.config_key, run.seed if run.seed is not None else str(run.path))


# ----------------------------------------------------------------------------- aggregation
@dataclass
class Row:
    """One configuration: seeds aggregated."""

    label: str
    strategy: str
    params: dict[str, str]
    seeds: list[int | None]
    tasks: dict[str, dict[str, Any]]  # task → metric, mean, std, ci95, values
    delta_m: float | None = None
    rank: int | None = None
    members: list[Run] = field(default_factory=list)
    #: The single-task baselines Δm% compares it with (task → metric, mean, configs).
    base: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.strategy == BASELINE_STRATEGY

    @property
    def baseline_key(self) -> tuple[tuple[str, str], ...] | None:
        """The settings its baselines share (:attr:`Run.baseline_key`; one for all members)."""
        return self.members[0].baseline_key if self.members else None

    @property
    def settings(self) -> dict[str, str]:
        """Its recorded config but the seed (values as on the command line), or its params and
        :data:`UNRECORDED` for runs without one (:data:`RECORDED` with it); and the preset its
        runs ran, if one."""
        config = self.members[0].config if self.members else None
        presets = {m.preset for m in self.members}
        preset = {PRESET_KEY: presets.pop()} if len(presets) == 1 and None not in presets else {}
        if config is None:
            return {**preset, **self.params, **UNRECORDED}
        return {**preset, **{key: _fmt_value(value) for key, value in config.items()
                             if key != "seed"}, **RECORDED}

    @property
    def seconds_per_step(self) -> float | None:
        """Mean training seconds per step over the runs that record it; None when none does, or
        when they were timed in different settings (device, threads, optimizer implementation,
        gradient engine)."""
        timed = [m for m in self.members if m.seconds_per_step is not None]
        if not timed or len({m.timing for m in timed}) > 1:
            return None
        return statistics.fmean(m.seconds_per_step for m in timed)

    @property
    def selected_steps(self) -> list[int | None]:
        """Each run's selected step (``trainer.select=best_val``; None: not recorded)."""
        return [m.selected["step"] if m.selected else None for m in self.members]


def common_params(runs: Sequence[Run]) -> dict[str, str]:
    """Non-strategy settings shared (same value) by every run."""
    keys = set.intersection(*(set(r.params) for r in runs)) if runs else set()
    return {k: runs[0].params[k] for k in sorted(keys)
            if not k.startswith("strategy.") and len({r.params[k] for r in runs}) == 1}


def varying_strategy_params(runs: Sequence[Run]) -> dict[str, set[str]]:
    """Per strategy, the ``strategy.*`` keys whose value differs between its runs (e.g. ``gamma``
    in a γ sweep), that only some of its runs have (a setting added to the strategy between runs),
    or that a run set on its command line (``++strategy.params=representation``: the label says
    MGDA-UB, not MGDA); the others are that strategy's fixed defaults and stay out of its
    label."""
    values: dict[str, dict[str, set[str]]] = {}
    counts: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for run in runs:
        totals[run.strategy] = totals.get(run.strategy, 0) + 1
        for key, value in run.params.items():
            if key.startswith("strategy."):
                values.setdefault(run.strategy, {}).setdefault(key, set()).add(value)
                count = counts.setdefault(run.strategy, {})
                count[key] = count.get(key, 0) + 1
    explicit: dict[str, set[str]] = {}
    for run in runs:
        explicit.setdefault(run.strategy, set()).update(run.explicit)
    return {strategy: {k for k, v in keys.items()
                       if len(v) > 1 or counts[strategy][k] < totals[strategy]
                       or k in explicit.get(strategy, set())}
            for strategy, keys in values.items()}


def label_of(strategy: str, params: dict[str, str], common: dict[str, str],
             varying: dict[str, set[str]] | None = None) -> str:
    """``strategy key=value ...`` with the common settings left out and, when ``varying`` is given,
    only the strategy hyperparameters that vary between that strategy's runs."""
    own = [f"{k.removeprefix('strategy.')}={v}" for k, v in sorted(params.items())
           if k not in common and (varying is None or not k.startswith("strategy.")
                                   or k in varying.get(strategy, set()))]
    return " ".join([strategy, *own])


def std(values: Sequence[float]) -> float | None:
    """Sample standard deviation; None (no spread to show) for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


#: t_{0.975, ν} for ν = 1 … 30 (the 97.5% quantile of Student's t: two-sided 95%), to 9 decimals.
T_975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851,
         2.364624252, 2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830,
         2.160368656, 2.144786688, 2.131449546, 2.119905299, 2.109815578, 2.100922040,
         2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
         2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)


def t_quantile_975(dof: float) -> float:
    """t_{0.975, dof}: the table :data:`T_975` for dof 1 … 30, beyond it the Cornish-Fisher
    expansion of Student's t around the normal quantile z = 1.959964 (Abramowitz & Stegun
    26.7.5, four terms: error < 1e-7 for dof > 30), z itself for dof = inf."""
    if math.isnan(dof) or dof < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {dof}")
    if dof <= len(T_975) and float(dof).is_integer():
        return T_975[int(dof) - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    if math.isinf(dof):
        return z
    terms = ((z**3 + z) / 4,
             (5 * z**5 + 16 * z**3 + 3 * z) / 96,
             (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(g / dof ** (k + 1) for k, g in enumerate(terms))


def ci95(values: Sequence[float]) -> tuple[float, float] | None:
    """95% confidence interval of the mean: mean ± t_{0.975, n−1} · sd / √n (Student t);
    None for fewer than two values."""
    if len(values) < 2:
        return None
    mean, half = statistics.fmean(values), (t_quantile_975(len(values) - 1)
                                            * statistics.stdev(values) / math.sqrt(len(values)))
    return mean - half, mean + half


def natural_key(label: str) -> tuple[Any, ...]:
    """Sort key of a label: word by word, ``key=value`` values compared as numbers when they are
    numbers (γ: -inf < -2 < -0.5 < 0 < 0.5 < 2 < inf), before text; then the label itself."""
    words = []
    for word in label.split(" "):
        key, sep, value = word.partition("=")
        words.append((key, *_value_key(value)) if sep else (word, 0, 0.0, ""))
    return tuple(words), label


def _value_key(text: str) -> tuple[int, float, str]:
    try:
        number = float(text)
    except ValueError:
        return 1, 0.0, text
    return (1, 0.0, text) if math.isnan(number) else (0, number, text)


def aggregate(runs: Sequence[Run], common: dict[str, str]) -> list[Row]:
    """Group finished runs by configuration (:attr:`Run.config_key`) and average each task's
    metric over seeds (one run per seed: see :func:`drop_duplicate_seeds`); labels made unique
    (:func:`disambiguate`), rows sorted by :func:`natural_key`."""
    finished = [r for r in runs if r.status == "finished"]
    varying = varying_strategy_params(finished)
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in finished:
        groups.setdefault(run.config_key, []).append(run)
    rows = []
    for members in groups.values():
        strategy, params = members[0].strategy, shared_params(members)
        rows.append(Row(label_of(strategy, params, common, varying), strategy, params,
                        sorted((m.seed for m in members), key=lambda s: (s is None, s or 0)),
                        task_stats(members), members=sorted(members, key=_seed_order)))
    disambiguate(rows)
    return sorted(rows, key=lambda r: natural_key(r.label))


def shared_params(members: Sequence[Run]) -> dict[str, str]:
    """The params every run of a configuration has with one value (its label's settings: a
    value left at its default in one run and written out in another is in no label)."""
    first = members[0].params
    return {key: value for key, value in first.items()
            if all(m.params.get(key) == value for m in members)}


def disambiguate(rows: Sequence[Row]) -> None:
    """Rows of different configurations whose labels read the same get the settings that tell
    them apart (:attr:`Row.settings`; in key order, each only where it separates more of them);
    a row that does not record a chosen setting (runs from before it existed, e.g.
    ``data.version``) says ``key=<unset>``, so that it does not read as the current default."""
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    for label, same in by_label.items():
        if len(same) < 2:
            continue
        settings = [row.settings for row in same]
        keys = sorted({key for s in settings for key in s
                       if len({t.get(key, "<unset>") for t in settings}) > 1},
                      key=lambda key: (key != PRESET_KEY, key))  # the preset's name first
        chosen: list[str] = []
        distinct = 1
        for key in keys:
            found = len({tuple(s.get(k, "<unset>") for k in [*chosen, key]) for s in settings})
            if found > distinct:
                chosen, distinct = [*chosen, key], found
            if distinct == len(same):
                break
        for row, s in zip(same, settings, strict=True):  # a run with no recorded config: only that
            shown = [key for key in chosen if key in s or s.get("config") != UNRECORDED["config"]]
            row.label = " ".join([label, *(f"{key.removeprefix('strategy.')}="
                                           f"{s.get(key, '<unset>')}" for key in shown)])


def _seed_order(run: Run) -> tuple[bool, int]:
    return run.seed is None, run.seed or 0


def task_stats(members: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """task → metric, finite values, their mean, sample std and 95% CI (:func:`ci95`; None when
    there are none / one)."""
    tasks: dict[str, dict[str, Any]] = {}
    for member in members:
        for task, m in member.tasks.items():
            entry = tasks.setdefault(task, {"metric": m["metric"], "values": []})
            if m["value"] is not None:
                entry["values"].append(m["value"])
    for entry in tasks.values():
        entry["mean"] = statistics.fmean(entry["values"]) if entry["values"] else None
        entry["std"] = std(entry["values"])
        entry["ci95"] = ci95(entry["values"])
    return tasks


Baselines = dict[Any, dict[str, dict[str, Any]]]


def baselines(rows: Sequence[Row]) -> Baselines:
    """The single-task baselines of each set of settings (:attr:`Row.baseline_key`; None: runs
    without a recorded config): per task, its metric, the mean over the single-task runs of that
    task with those settings and how many configurations they are."""
    found: dict[Any, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row.is_baseline:
            for task, entry in row.tasks.items():
                if entry["values"]:
                    base = found.setdefault(row.baseline_key, {}).setdefault(
                        task, {"metric": entry["metric"], "values": [], "configs": 0})
                    base["values"].extend(entry["values"])
                    base["configs"] += 1
    return {key: {task: {"metric": b["metric"], "mean": statistics.fmean(b["values"]),
                         "configs": b["configs"]} for task, b in tasks.items()}
            for key, tasks in found.items()}


def baseline_sets(groups: Baselines) -> list[dict[str, Any]]:
    """The report's ``baselines``: one entry per set of settings, with the settings that tell
    the sets apart (none when there is one set) and its per-task baselines."""
    keys = list(groups)
    settings = [dict(key) if key is not None else dict(UNRECORDED) for key in keys]
    differing = sorted({k for s in settings for k in s
                        if len({json.dumps(t.get(k)) for t in settings}) > 1})
    return [{"settings": {k: json.loads(s[k]) if k in s and key is not None else s.get(k)
                          for k in differing},
             "tasks": groups[key]} for key, s in zip(keys, settings, strict=True)]


def delta_m(tasks: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> float | None:
    """Δm% of one configuration against the baselines; None unless every task has a baseline and
    a mean."""
    if not tasks or any(t not in base or base[t]["mean"] == 0 or e["mean"] is None
                        for t, e in tasks.items()):
        return None
    terms = []
    for task, entry in tasks.items():
        sign = -1.0 if entry["metric"] in HIGHER_IS_BETTER else 1.0
        terms.append(sign * (entry["mean"] - base[task]["mean"]) / base[task]["mean"] * 100.0)
    return statistics.fmean(terms)


def rank_rows(rows: Sequence[Row], groups: Baselines) -> None:
    """Set each row's baselines (those of its settings) and Δm%, and rank (1 = lowest Δm%) the
    multi-task rows that have one."""
    for row in rows:
        row.base = groups.get(row.baseline_key, {})
        row.delta_m = delta_m(row.tasks, row.base)
    ranked = sorted((r for r in rows if not r.is_baseline and r.delta_m is not None
                     and math.isfinite(r.delta_m)), key=lambda r: r.delta_m)
    for position, row in enumerate(ranked, start=1):
        row.rank = position


# ----------------------------------------------------------------------------- formatting
def fmt_number(value: float) -> str:
    """4 significant digits (table cells)."""
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def fmt_ci(interval: tuple[float, float] | None) -> str:
    """``[lo, hi]`` of a 95% CI; ``[—]`` when there is none (a single value)."""
    return "[—]" if interval is None else f"[{fmt_number(interval[0])}, {fmt_number(interval[1])}]"


def fmt_cell(entry: dict[str, Any] | None, n_seeds: int) -> str:
    """``mean ± std [95% CI]`` of one task in one row; "—" for the whole cell when the row lacks
    the task and for the spread and CI of a single value; ``(n=k)`` when only k of the row's
    ``n_seeds`` runs have a finite value."""
    if entry is None:
        return "—"
    if entry["mean"] is None:
        return "non-finite"
    spread = "—" if entry["std"] is None else fmt_number(entry["std"])
    cell = f"{fmt_number(entry['mean'])} ± {spread} {fmt_ci(entry.get('ci95'))}"
    n = len(entry["values"])
    return cell if n >= n_seeds else f"{cell} (n={n})"


def fmt_selected(steps: Sequence[int | None]) -> str:
    """The selected steps of a row's runs: ``k`` when they agree, ``lo–hi`` when they differ
    (``, m last`` when m runs recorded no selection); "—" when none did."""
    known = sorted(s for s in steps if s is not None)
    if not known:
        return "—"
    cell = str(known[0]) if known[0] == known[-1] else f"{known[0]}–{known[-1]}"
    missing = len(steps) - len(known)
    return f"{cell}, {missing} last" if missing else cell


def any_selected(rows: Sequence[Row]) -> bool:
    """Whether any run of the rows picked its test model on validation (``selected``)."""
    return any(m.selected for row in rows for m in row.members)


def fmt_seconds(value: float | None) -> str:
    """A time cell (4 significant digits); "—" when not recorded."""
    return "—" if value is None else fmt_number(value)


def task_columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(task, metric) in first-seen order."""
    seen: dict[str, str] = {}
    for row in rows:
        for task, entry in row.tasks.items():
            seen.setdefault(task, entry["metric"])
    return list(seen.items())


def table_order(row: Row) -> tuple[Any, ...]:
    """Best rank first, then unranked rows, baselines last; ties by :func:`natural_key`."""
    return row.is_baseline, row.rank is None, row.rank or 0, natural_key(row.label)


def table_rows(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main table (:func:`table_order`)."""
    columns, selected = task_columns(rows), any_selected(rows)
    header = ["configuration", "seeds",
              *[f"{t} {m} {'↑' if m in HIGHER_IS_BETTER else '↓'}" for t, m in columns],
              "Δm% ↓", "rank", "s/step", *(["selected step"] if selected else [])]
    cells = [[row.label, str(len(row.seeds)),
              *[fmt_cell(row.tasks.get(t), len(row.seeds)) for t, _ in columns],
              "n/a" if row.delta_m is None else f"{row.delta_m:+.2f}",
              "baseline" if row.is_baseline else str(row.rank or "—"),
              fmt_seconds(row.seconds_per_step),
              *([fmt_selected(row.selected_steps)] if selected else [])]
             for row in sorted(rows, key=table_order)]
    return header, cells


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    """A GitHub markdown table, columns padded so it reads in a terminal too."""
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])


def problems_of(runs: Sequence[Run], kept: Sequence[Run],
                dropped: Sequence[tuple[Run, Run]]) -> list[dict[str, Any]]:
    """Everything left out, never silently: failed and unfinished jobs, used runs with a
    non-finite test metric (left out of that mean), duplicate seeds (left out entirely)."""
    found = [_problem(r, r.status, r.error) for r in runs if r.status != "finished"]
    found += [_problem(r, "non-finite metric", f"{', '.join(r.nonfinite)} null or non-finite; "
                       "left out of the mean") for r in kept if r.nonfinite]
    for run, other in dropped:
        why = "newer metrics.json" if other.mtime > run.mtime else "same time, later path"
        found.append(_problem(run, "duplicate seed", f"seed {run.seed} of this configuration "
                              f"also in `{other.path}` ({why}; used instead)"))
    return found


def _problem(run: Run, problem: str, error: str | None) -> dict[str, Any]:
    return {"path": str(run.path), "status": run.status, "problem": problem, "error": error}


def problems_section(problems: Sequence[dict[str, Any]]) -> str:
    """The problems, one line each."""
    if not problems:
        return ""
    lines = [f"## Problems ({len(problems)})", ""]
    lines += [f"- **{p['problem']}** `{p['path']}`" + (f": {p['error']}" if p["error"] else "")
              for p in problems]
    return "\n".join(lines)


def without_baselines(rows: Sequence[Row], groups: Baselines) -> list[str]:
    """Labels of the multi-task configurations that have no single-task baseline of some task
    with their settings, while other settings have baselines (their Δm% is n/a)."""
    if not groups:
        return []
    return [row.label for row in sorted(rows, key=table_order) if not row.is_baseline
            and any(task not in row.base for task in row.tasks)]


def render_markdown(report: dict[str, Any], header: list[str], cells: list[list[str]],
                    problems: Sequence[dict[str, Any]], plots: Sequence[Path],
                    reference: str = "", unmatched: Sequence[str] = ()) -> str:
    """The full report.md text (``reference``: the published-numbers section, if any;
    ``unmatched``: :func:`without_baselines`)."""
    counts = report["counts"]
    duplicates = sum(p["problem"] == "duplicate seed" for p in problems)
    parts = ["# mtlbench report", "",
             f"Runs: {counts['finished']} finished"
             + (f" ({duplicates} duplicate seed{'s' * (duplicates > 1)} left out)"
                if duplicates else "")
             + f", {counts['failed']} failed, {counts['unfinished']} unfinished; "
             f"{len(cells)} configurations. Metrics: test split, mean ± sample std over seeds "
             "[95% CI of the mean, Student t] (— for a single seed); s/step: training seconds "
             f"per step (`{TIME_KEY} / {STEPS_KEY}` of metrics.json, mean over the seeds that "
             "recorded it; — when none did, or when they ran on different devices, thread "
             "counts, optimizer implementations or gradient engines: a run resumed another way, "
             "whose `segments` differ, has none).", ""]
    criteria = report.get("selection_criteria")
    if criteria:
        parts += ["Selected step: the step whose model was tested (`trainer.select=best_val`; "
                  f"criterion: {', '.join(f'`{c}`' for c in criteria)}); lo–hi over seeds.", ""]
    if report["common"]:
        common = ", ".join(f"`{k}={v}`" for k, v in report["common"].items())
        parts += [f"Common settings: {common}", ""]
    sets = report["baselines"]
    if not sets:
        parts += ["Δm%: n/a (no `strategy=single_task data.only=<task>` runs in these dirs).", ""]
    elif len(sets) > 1:
        keys = list(sets[0]["settings"])
        apart = ", ".join(f"`{k}`" for k in keys[:4]) + (
            f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        parts += [f"Δm%: each configuration against the single-task runs of its own settings "
                  f"({len(sets)} sets of baselines, which differ in {apart}).", ""]
    if unmatched:
        parts += ["Δm%: n/a for " + ", ".join(f"`{label}`" for label in unmatched)
                  + ": no single-task runs of every task with their settings in these dirs.", ""]
    parts += [markdown_table(header, cells), ""]
    if reference:
        parts += [reference, ""]
    section = problems_section(problems)
    if section:
        parts += [section, ""]
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts).rstrip() + "\n"


def _blank(value: Any) -> Any:
    """A CSV cell: "" for None."""
    return "" if value is None else value


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    """One line per configuration: label, params, seeds, per-task mean/std/95% CI, Δm%, rank,
    seconds per step, selected steps (a JSON list in seed order, null where a run recorded none;
    "" when no run did)."""
    columns = task_columns(rows)
    stat_names = ("mean", "std", "ci95_lo", "ci95_hi")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["configuration", "strategy", "params", "n_seeds", "seeds",
                         *[f"{t}/{m}/{s}" for t, m in columns for s in stat_names],
                         "delta_m_pct", "rank", "seconds_per_step", "selected_steps"])
        for row in rows:
            stats = []
            for task, _ in columns:
                entry = row.tasks.get(task) or {}
                interval = entry.get("ci95") or (None, None)
                stats += [_blank(entry.get("mean")), _blank(entry.get("std")),
                          _blank(interval[0]), _blank(interval[1])]
            writer.writerow([row.label, row.strategy, json.dumps(row.params, sort_keys=True),
                             len(row.seeds), " ".join(map(str, row.seeds)), *stats,
                             _blank(row.delta_m),
                             "baseline" if row.is_baseline else (row.rank or ""),
                             _blank(row.seconds_per_step),
                             json.dumps(row.selected_steps)
                             if any(s is not None for s in row.selected_steps) else ""])


def as_json(report: dict[str, Any], rows: Sequence[Row],
            problems: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``--format json`` document (also report.json); a std of None: a single value."""
    return {
        **report,
        "rows": [{"label": r.label, "strategy": r.strategy, "params": r.params, "seeds": r.seeds,
                  "tasks": {t: {k: e[k] for k in ("metric", "mean", "std", "ci95", "values")}
                            for t, e in r.tasks.items()},
                  "delta_m_pct": r.delta_m, "rank": r.rank, "baseline": r.is_baseline,
                  "baselines": {t: b["mean"] for t, b in r.base.items()},
                  "seconds_per_step": r.seconds_per_step, "selected_steps": r.selected_steps}
                 for r in rows],
        "problems": problems,
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


# ----------------------------------------------------------------------------- published numbers
@dataclass
class Comparison:
    """One published number beside one configuration of ours (``row`` None: no run matches).

    ``ours``: mean, std, ci95, n of our number in the published number's units (None when it
    cannot be computed from our runs); ``difference``: our mean − the published value;
    ``by_data``: whether configurations had to run the published number's data config (None:
    none was compared, the runs' data being another or unknown).
    """

    published: Published
    row: Row | None
    ours: dict[str, Any] | None
    difference: float | None
    by_data: bool | None = False


def reference_names() -> list[str]:
    """The names ``--reference`` accepts (the shipped tables, then ``list``)."""
    return [*references.names(), LIST_REFERENCES]


def check_reference(name: str | None, allow_list: bool = True) -> None:
    """:class:`ReportError` naming the accepted values when ``name`` is not one of them (nor
    ``list``, unless ``allow_list``)."""
    accepted = reference_names() if allow_list else references.names()
    if name is not None and name not in accepted:
        raise ReportError(f"unknown reference `{name}`; accepted: "
                          f"{', '.join(accepted)}.")


def list_references() -> str:
    """One line per shipped table: name, data configs, number of values, source."""
    lines = []
    for name in references.names():
        published = references.load(name)
        data = ", ".join(dict.fromkeys(p.data for p in published))
        sources = "; ".join(dict.fromkeys(p.source for p in published))
        lines.append(f"{name}  (data: {data}; {len(published)} values)  {sources}")
    return "\n".join(lines) + "\n"


def _param_matches(actual: str | None, wanted: str) -> bool:
    """A strategy setting equals the published one (as text, or as numbers: 0.2 == 0.20)."""
    if actual is None:
        return False
    if actual == wanted:
        return True
    try:
        return float(actual) == float(wanted)
    except ValueError:
        return False


@functools.cache
def strategy_defaults(name: str) -> dict[str, str]:
    """``strategy.<key>`` → value of the shipped ``conf/strategy/<name>.yaml`` as Hydra composes
    it (as on the command line; {} when there is no such file)."""
    return _flatten(_strategy_node(name), "strategy")


def _strategy_node(name: str) -> dict[str, Any]:
    """``conf/strategy/<name>.yaml`` with its defaults list applied, without Hydra (which would
    import the training code): another strategy merged in (``- imtl_g``) or put under a key
    (``- /strategy@loss_weighting: imtl_l``), then the file's own keys (``_self_``)."""
    path = resources.files("mtlbench.conf").joinpath("strategy", f"{name}.yaml")
    try:
        node = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    merged: dict[str, Any] = {}
    for entry in node.pop("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_":
            merged.update(_strategy_node(entry))
        elif isinstance(entry, dict):
            for target, option in entry.items():
                merged[str(target).rpartition("@")[2]] = _strategy_node(str(option))
    return {**merged, **node}


def row_matches(row: Row, published: Published, by_data: bool = False) -> bool:
    """Whether configuration ``row`` runs the published method: same strategy, the published
    strategy settings and the strategy's shipped defaults for every other setting (a stacked
    loss weighting, CR-MOGM or another variant is not the published method), every task the
    number is computed over and, with ``by_data``, the published number's data config for
    every run."""
    wanted = {**strategy_defaults(published.strategy),
              **{f"strategy.{k}": v for k, v in published.strategy_params.items()}}
    own = {k: v for k, v in row.params.items() if k.startswith("strategy.")}
    return (bool(published.strategy) and row.strategy == published.strategy
            and all(_param_matches(own.get(k), v) for k, v in wanted.items())
            and set(own) <= set(wanted)
            and all(t in row.tasks for t in published.our_tasks)
            and (not by_data or all(m.data == published.data for m in row.members)))


def our_values(row: Row, published: Published) -> list[float] | None:
    """Our numbers (one per seed; one in all for a Δm%) comparable with ``published``, in its
    units; None when our runs cannot give one (a metric they do not record)."""
    scale = 100.0 if published.unit == "%" else 1.0
    if published.metric in ("accuracy", "mse"):
        values = []
        for run in row.members:
            per_task = [run.tasks.get(t) for t in published.our_tasks]
            if all(m is not None and m["value"] is not None and m["metric"] == published.metric
                   for m in per_task):
                values.append(scale * statistics.fmean(m["value"] for m in per_task if m))
        return values
    if published.metric.startswith("epoch_seconds"):
        return [r.seconds_per_step * r.steps_per_epoch for r in row.members
                if r.seconds_per_step is not None and r.steps_per_epoch is not None]
    if published.metric in ("delta_m_pct", "delta_m_pct_higher_better"):
        value = delta_m({t: row.tasks[t] for t in published.our_tasks}, row.base)
        sign = -1.0 if published.metric == "delta_m_pct_higher_better" else 1.0
        return [] if value is None else [sign * value]
    return None


def compare(published: Sequence[Published], rows: Sequence[Row],
            by_data: bool | None = False) -> list[Comparison]:
    """Each published number beside every configuration that runs its method (table order; with
    ``by_data``, on the same data config; with None, beside none: the data differ), or beside
    none; our numbers never feed back into the rows (ranks, Δm%)."""
    found = []
    for pub in published:
        matching = [] if by_data is None else sorted(
            (r for r in rows if row_matches(r, pub, by_data)), key=table_order)
        for row in matching or [None]:
            values = None if row is None else our_values(row, pub)
            ours = None if values is None else {
                "mean": statistics.fmean(values) if values else None, "std": std(values),
                "ci95": ci95(values), "n": len(values)}
            difference = (None if ours is None or ours["mean"] is None
                          else ours["mean"] - pub.value)
            found.append(Comparison(pub, row, ours, difference, by_data))
    return found


def select_published(published: Sequence[Published], runs: Sequence[Run]
                     ) -> tuple[list[Published], str, bool | None]:
    """The published numbers of the runs' data configs, a note saying which data the runs and
    the table use when they differ, and how to match configurations: by data (True). When no
    run's data config is known or in the table: every number, beside none of our runs (None),
    since a number on other data is not comparable."""
    ours = sorted({r.data for r in runs if r.data})
    theirs = list(dict.fromkeys(p.data for p in published))
    shown = [p for p in published if p.data in ours]
    if not ours:
        return list(published), ("Note: the runs' data config is unknown (not in `.hydra/`), "
                                 "so none is put beside these numbers."), None
    note = ("" if set(ours) <= set(theirs) else
            f"Note: these runs use {', '.join(f'data={d}' for d in ours)}; the table's "
            f"protocols are for {', '.join(f'data={d}' for d in theirs)}"
            + ("." if shown else ", so none of them is put beside these numbers."))
    return (shown, note, True) if shown else (list(published), note, None)


#: Units whose published numbers have two decimals; ours are shown with as many.
FIXED_UNITS = frozenset({"%", "s"})


def fmt_in_unit(value: float, unit: str, sign: bool = False) -> str:
    """A number of the published table: two decimals in % and s (as published), else 4
    significant digits; ``sign``: always with + or -."""
    if unit in FIXED_UNITS:
        return f"{value:+.2f}" if sign else f"{value:.2f}"
    return f"{value:+.4g}" if sign else fmt_number(value)


def _published_cell(pub: Published) -> str:
    """The published value as the paper gives it (± sd or ± 95% CI half-width)."""
    cell = fmt_in_unit(pub.value, pub.unit)
    if pub.sd is not None:
        cell += f" ± {fmt_in_unit(pub.sd, pub.unit)} (sd)"
    if pub.ci95 is not None:
        cell += f" ± {fmt_in_unit(pub.ci95, pub.unit)} (95% CI)"
    return cell


def _ours_cell(comparison: Comparison) -> str:
    """Our mean ± sd [95% CI] in the published number's units, or why there is none."""
    pub, ours = comparison.published, comparison.ours
    if comparison.row is None:
        return "—"
    if ours is None or ours["mean"] is None:
        return "not recorded" if pub.metric.startswith("epoch_seconds") else "—"
    if pub.metric.startswith("delta_m_pct"):
        return fmt_in_unit(ours["mean"], pub.unit, sign=True)
    spread = "—" if ours["std"] is None else fmt_in_unit(ours["std"], pub.unit)
    interval = ("[—]" if ours["ci95"] is None else
                f"[{fmt_in_unit(ours['ci95'][0], pub.unit)}, "
                f"{fmt_in_unit(ours['ci95'][1], pub.unit)}]")
    return f"{fmt_in_unit(ours['mean'], pub.unit)} ± {spread} {interval}"


def _configuration_cell(comparison: Comparison) -> str:
    """Our configuration's label (with the strategy settings that matched the published method
    when the label leaves them out), or why none matched."""
    pub, row = comparison.published, comparison.row
    wanted = [f"{k}={v}" for k, v in pub.strategy_params.items()]
    if row is not None:
        missing = [w for w in wanted if w not in row.label.split(" ")]
        return f"{row.label} ({' '.join(missing)})" if missing else row.label
    if not pub.strategy:
        return "— (not in mtlbench)"
    if comparison.by_data is None:
        return f"— (not compared: no run of ours on data={pub.data})"
    tasks = (f" with task{'s' * (len(pub.our_tasks) > 1)} {', '.join(pub.our_tasks)}"
             if pub.our_tasks else "")
    data = f" on data={pub.data}" if comparison.by_data else ""
    variant = " with its other settings at their defaults" if wanted else (
        " with its default settings")
    return f"— (no `{' '.join([pub.strategy, *wanted])}` run{variant}{tasks}{data})"


def _task_cell(pub: Published) -> str:
    ours = ",".join(pub.our_tasks)
    return pub.task if not ours or ours == pub.task else f"{pub.task} → {ours}"


def render_reference(name: str, comparisons: Sequence[Comparison], note: str) -> str:
    """The markdown section: published numbers beside ours, sources, protocols and notes."""
    shown = [c.published for c in comparisons]
    parts = [f"## Published: `{name}` (beside our runs; not in the ranks or Δm% above)", "",
             "*published*: the paper's numbers under its own protocol, not rerun here; *ours*: "
             "the runs above, mean ± sample std [95% CI], in the paper's units (accuracy in %); "
             "ours − published: difference of the means. A Δm% of ours is computed over the "
             "named tasks against our single-task runs.", ""]
    parts += [f"Source: {source}" for source in dict.fromkeys(p.source for p in shown)] + [""]
    parts += [f"Protocol (data={data}): {protocol}"
              for data, protocol in dict.fromkeys((p.data, p.protocol) for p in shown)] + [""]
    if note:
        parts += [note, ""]
    header = ["method (published)", "task", "metric", "published", "our configuration",
              "ours", "n", "ours − published"]
    cells = [[c.published.method, _task_cell(c.published),
              f"{c.published.metric} ({c.published.unit})", _published_cell(c.published),
              _configuration_cell(c), _ours_cell(c),
              str(c.ours["n"]) if c.row is not None and c.ours and c.ours["n"] else "—",
              "—" if c.difference is None else fmt_in_unit(c.difference, c.published.unit,
                                                           sign=True)]
             for c in comparisons]
    parts += [markdown_table(header, cells)]
    parts += protocol_section(name, comparisons)
    notes = reference_notes(shown)
    if notes:
        parts += ["", "Notes:", *(f"- {note}" for note in notes)]
    return "\n".join(parts)


def reference_notes(shown: Sequence[Published]) -> list[str]:
    """Each distinct note (the ``;``-separated parts of the ``note`` column) once: bare when it
    concerns every number shown, prefixed with the tasks when it concerns every number of those
    tasks, else with the methods it concerns."""
    concerns: dict[str, list[Published]] = {}
    for pub in shown:
        for part in filter(None, (t.strip() for t in pub.note.split(";"))):
            concerns.setdefault(part, []).append(pub)
    notes = []
    for part, pubs in concerns.items():
        tasks = list(dict.fromkeys(p.task for p in pubs))
        if len(pubs) == len(shown):
            notes.append(part)
        elif len(pubs) == sum(p.task in tasks for p in shown):
            notes.append(f"{', '.join(tasks)}: {part}")
        else:
            notes.append(f"{', '.join(dict.fromkeys(p.method for p in pubs))}: {part}")
    return notes


def protocol_differences(row: Row, settings: dict[str, list[Any]]) -> list[str]:
    """``key=ours (paper: theirs)`` for each setting of a published protocol that configuration
    ``row`` runs differently (from its recorded config); ``["its config is not recorded"]``
    without one."""
    config = row.members[0].config if row.members else None
    if config is None:
        return ["its config is not recorded"] if settings else []
    found = []
    for key, accepted in settings.items():
        ours = config.get(key)
        if not any(_param_matches(_fmt_value(ours), _fmt_value(value)) for value in accepted):
            theirs = " or ".join(_fmt_value(value) for value in accepted)
            found.append(f"{key}={_fmt_value(ours)} (paper: {theirs})")
    return found


def timed_on(row: Row) -> str:
    """Where a configuration's runs were timed (metrics.json's ``device`` and ``num_threads``):
    ``cpu, 1 thread``; "an unrecorded device" or "several devices" where they do not say one."""
    found = {(json.loads(m.timing[0]), json.loads(m.timing[1])) if len(m.timing) > 1
             else (None, None) for m in row.members}
    if len(found) > 1:
        return "several devices or thread counts"
    device, threads = found.pop() if found else (None, None)
    if device is None:
        return "an unrecorded device"
    return f"{device}" + (f", {threads} thread{'s' * (threads != 1)}" if threads else "")


def protocol_section(name: str, comparisons: Sequence[Comparison]) -> list[str]:
    """Markdown lines: per configuration put beside the table, the protocol settings it runs
    differently (:func:`protocol_differences`)."""
    settings = references.protocol(name)
    rows = list({id(c.row): c.row for c in comparisons if c.row is not None}.values())
    if not settings or not rows:
        return []
    timed = {id(c.row) for c in comparisons
             if c.row is not None and c.published.metric.startswith("epoch_seconds")}
    lines = []
    for row in rows:
        differences = protocol_differences(row, settings)
        if id(row) in timed:
            differences.append(f"timed on {timed_on(row)}")
        lines.append(f"- `{row.label}`: " + ("; ".join(differences) if differences else
                                             "the paper's settings"))
    keys = ", ".join(f"`{k}`" for k in settings)
    return ["", f"Protocol settings of ours against the paper's ({keys}):", *lines]


def reference_records(name: str, comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """The comparisons as flat records (reference CSV lines and report.json)."""
    records = []
    settings = references.protocol(name)
    for c in comparisons:
        pub, ours = c.published, c.ours or {}
        interval = ours.get("ci95") or (None, None)
        records.append({
            "reference": name, "source": pub.source, "data": pub.data, "method": pub.method,
            "task": pub.task, "our_task": ",".join(pub.our_tasks), "metric": pub.metric,
            "unit": pub.unit, "published": pub.value, "published_sd": pub.sd,
            "published_ci95": pub.ci95, "strategy": pub.strategy,
            "configuration": c.row.label if c.row else None, "ours_mean": ours.get("mean"),
            "ours_std": ours.get("std"), "ours_ci95_lo": interval[0],
            "ours_ci95_hi": interval[1], "ours_n": ours.get("n") if c.row else None,
            "difference": c.difference,
            "protocol_differences": ("; ".join(protocol_differences(c.row, settings))
                                     if c.row else None)})
    return records


def write_reference_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """``reference_<name>.csv``: one line per published number and configuration."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if records:
            writer.writerow(list(records[0]))
        for record in records:
            writer.writerow([_blank(v) for v in record.values()])


# ----------------------------------------------------------------------------- plots
def gamma_value(text: str) -> float:
    """γ from its config text (``inf``, ``-inf``, ``0.5``)."""
    return float(text)


def _has_mean(row: Row, task: str) -> bool:
    return task in row.tasks and row.tasks[task]["mean"] is not None


def _spread(entry: dict[str, Any]) -> float:
    """The error bar of a mean: its std, 0 for a single value."""
    return entry["std"] or 0.0


def _arrow(metric: str) -> str:
    return "↑" if metric in HIGHER_IS_BETTER else "↓"


def plot_gamma(path: Path, rows: Sequence[Row]) -> bool:
    """Metric vs γ per task for the generalized-mean rows (seeds as dots, mean ± std as a line).

    γ is put on a categorical axis (sorted, ±inf at the ends), so infinite γ needs no fake value.
    Returns False (and writes nothing) when fewer than two γ values were run.
    """
    sweep = [r for r in rows if GAMMA_KEY in r.params]
    gammas = sorted({gamma_value(r.params[GAMMA_KEY]) for r in sweep})
    if len(gammas) < 2:
        return False
    from matplotlib.figure import Figure

    columns = task_columns(sweep)
    width = max(4.2, 0.2 * len(gammas))
    fig = Figure(figsize=(width * len(columns), 3.6), layout="constrained")
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    lines: dict[str, list[Row]] = {}
    for row in sweep:
        rest = {k: v for k, v in row.params.items() if k != GAMMA_KEY}
        lines.setdefault(label_of(row.strategy, rest, {}), []).append(row)
    for ax, (task, metric) in zip(axes, columns, strict=True):
        for name, members in lines.items():
            _plot_gamma_line(ax, task, name, members, gammas)
        ax.set_xticks(range(len(gammas)), [fmt_float(g) for g in gammas],
                      rotation=90 if len(gammas) > 12 else 0)
        ax.set_xlabel("γ")
        ax.set_title(f"{task}: test {metric} {_arrow(metric)}")
    if len(lines) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7,
                   ncols=-(-len(lines) // KEY_ROWS))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return True


def _plot_gamma_line(ax: Axes, task: str, name: str, members: Sequence[Row],
                     gammas: list[float]) -> None:
    """One line of the γ plot: mean ± std per γ, each seed's value as a gray dot."""
    members = sorted((m for m in members if _has_mean(m, task)),
                     key=lambda m: gamma_value(m.params[GAMMA_KEY]))
    xs = [gammas.index(gamma_value(m.params[GAMMA_KEY])) for m in members]
    ax.errorbar(xs, [m.tasks[task]["mean"] for m in members],
                yerr=[_spread(m.tasks[task]) for m in members], marker="o", capsize=3, label=name)
    for x, member in zip(xs, members, strict=True):
        values = member.tasks[task]["values"]
        ax.scatter([x] * len(values), values, s=10, alpha=0.4, color="gray")


def pareto_front(points: Sequence[tuple[float, float]], higher: tuple[bool, bool]) -> list[int]:
    """Indices of the non-dominated points (each axis maximized or minimized per ``higher``)."""
    signed = [(x if higher[0] else -x, y if higher[1] else -y) for x, y in points]
    return [i for i, (x, y) in enumerate(signed)
            if not any(a >= x and b >= y and (a > x or b > y) for a, b in signed)]


def pareto_figure(rows: Sequence[Row], base: dict[str, dict[str, Any]], task_a: str,
                  task_b: str) -> Figure | None:
    """Task-vs-task scatter of the configurations (mean ± std) that have both tasks, numbered in
    table order with a key beside the axes (so labels never overlap or leave the figure), the
    Pareto front joined (its numbers bold), single-task baselines as dashed lines.
    None when no row has both tasks."""
    both = sorted((r for r in rows if _has_mean(r, task_a) and _has_mean(r, task_b)),
                  key=table_order)
    if not both:
        return None
    from matplotlib.figure import Figure

    columns = -(-len(both) // KEY_ROWS)
    key_width = columns * (0.6 + 0.06 * max(len(r.label) for r in both))
    fig = Figure(figsize=(5.6 + key_width, max(4.8, 1.2 + 0.16 * -(-len(both) // columns))),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.margins(0.08)
    points = [(r.tasks[task_a]["mean"], r.tasks[task_b]["mean"]) for r in both]
    metric_a, metric_b = both[0].tasks[task_a]["metric"], both[0].tasks[task_b]["metric"]
    front = pareto_front(points, (metric_a in HIGHER_IS_BETTER, metric_b in HIGHER_IS_BETTER))
    handles = [_plot_point(ax, row, (task_a, task_b), number, number - 1 in front)
               for number, row in enumerate(both, start=1)]
    fig.legend(handles, [f"{i}  {r.label}" for i, r in enumerate(both, start=1)],
               loc="outside right upper", fontsize=7, ncols=columns, title="configurations")
    _plot_reference_lines(ax, sorted(points[i] for i in front), base, (task_a, task_b))
    ax.set_xlabel(f"{task_a} test {metric_a} {_arrow(metric_a)}")
    ax.set_ylabel(f"{task_b} test {metric_b} {_arrow(metric_b)}")
    return fig


def _plot_point(ax: Axes, row: Row, tasks: tuple[str, str], number: int, on_front: bool) -> Any:
    """One configuration: mean ± std on both axes and its number; returns the legend handle."""
    a, b = row.tasks[tasks[0]], row.tasks[tasks[1]]
    handle = ax.errorbar(a["mean"], b["mean"], xerr=_spread(a), yerr=_spread(b), marker="o",
                         markersize=4, capsize=2, alpha=0.8)
    ax.annotate(str(number), (a["mean"], b["mean"]), xytext=(3, 3), textcoords="offset points",
                fontsize=7, fontweight="bold" if on_front else "normal")
    return handle


def _plot_reference_lines(ax: Axes, front: list[tuple[float, float]],
                          base: dict[str, dict[str, Any]], tasks: tuple[str, str]) -> None:
    """The Pareto front and the single-task baselines, with their own small legend."""
    ax.plot(*zip(*front, strict=True), color="black", linewidth=1, label="Pareto front")
    if tasks[0] in base:
        ax.axvline(base[tasks[0]]["mean"], linestyle="--", color="gray", label="single-task")
    if tasks[1] in base:
        ax.axhline(base[tasks[1]]["mean"], linestyle="--", color="gray",
                   label="_" if tasks[0] in base else "single-task")
    ax.legend(fontsize="small")


def plot_pareto(path: Path, rows: Sequence[Row], base: dict[str, dict[str, Any]],
                task_a: str, task_b: str) -> bool:
    """Write :func:`pareto_figure` to ``path``; False (nothing written) when it has no points."""
    fig = pareto_figure(rows, base, task_a, task_b)
    if fig is None:
        return False
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return True


def write_plots(out: Path, rows: Sequence[Row], pareto: Sequence[str] | None) -> list[Path]:
    """The PNG files that apply to these rows; returns their paths. The Pareto plot draws the
    single-task baselines where its configurations share one set of them."""
    written = []
    if plot_gamma(out / "gamma.png", rows):
        written.append(out / "gamma.png")
    multi = [r for r in rows if len(r.tasks) >= 2]
    base = multi[0].base if len({r.baseline_key for r in multi}) == 1 else {}
    names = [t for t, _ in task_columns(multi)]
    task_a, task_b = pareto if pareto else (names[:2] if len(names) >= 2 else (None, None))
    if task_a and task_b and plot_pareto(out / "pareto.png", multi, base, task_a, task_b):
        written.append(out / "pareto.png")
    return written


# ----------------------------------------------------------------------------- entry point
def folder(what: str) -> Any:
    """An argparse type: a non-empty path (an empty one would silently be the current dir)."""
    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{what} is empty; give a folder (`.` for this one)")
        return Path(text)
    parse.__name__ = "folder"
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``mtlbench report: error: …``, exit 2) instead of
    the usage block and then the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (mtlbench report --help: usage)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``mtlbench report`` argument parser."""
    parser = OneLineParser(
        prog="mtlbench report",
        usage="mtlbench report [options] DIR [DIR ...]\n"
              "       mtlbench report --list-references",
        description="Compare runs: per-task test metrics (mean ± std over seeds), Δm% versus the "
                    "single-task baselines found in the dirs, rank; writes report.md, report.csv, "
                    "report.json and PNG plots.")
    parser.add_argument("dirs", nargs="*", type=folder("DIR"), metavar="DIR",
                        help="sweep or run directories, searched recursively")
    parser.add_argument("--out", type=folder("--out"),
                        help="where to write the files (default: first DIR)")
    parser.add_argument("--pareto", nargs=2, metavar=("TASK_A", "TASK_B"),
                        help="tasks of the Pareto scatter (default: the first two)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="stdout format (default: table)")
    parser.add_argument("--no-files", action="store_true", help="print only; write nothing")
    parser.add_argument("--reference", metavar="NAME",
                        help="show a shipped table of published numbers beside the runs "
                             "(labelled published; never in the ranks or Δm%%); `list` (or "
                             "--list-references) lists the tables")
    parser.add_argument("--list-references", action="store_true",
                        help="list the shipped tables of published numbers and exit")
    return parser


def check_pareto_tasks(pareto: Sequence[str] | None, rows: Sequence[Row]) -> None:
    """:class:`ReportError` when ``--pareto`` names a task no row has."""
    known = {t for t, _ in task_columns(rows)}
    for task in pareto or ():
        if task not in known:
            raise ReportError(f"`--pareto {task}` names no task of these runs; "
                              f"the tasks are {', '.join(sorted(known)) or 'none'}.")


def make_report(dirs: Sequence[Path], out: Path | None, pareto: Sequence[str] | None,
                write: bool, reference: str | None = None) -> tuple[str, dict[str, Any]]:
    """Read, aggregate, write the files; returns (markdown text, json document). ``reference``:
    a shipped table of published numbers to show beside the runs (:func:`compare`)."""
    check_reference(reference, allow_list=False)
    runs = collect_runs(dirs)
    kept, dropped = drop_duplicate_seeds([r for r in runs if r.status == "finished"])
    common = common_params(kept)
    rows = aggregate(kept, common)
    groups = baselines(rows)
    rank_rows(rows, groups)
    check_pareto_tasks(pareto, rows)
    report = {"dirs": [str(d) for d in dirs], "common": common,
              "counts": {s: sum(r.status == s for r in runs)
                         for s in ("finished", "failed", "unfinished")},
              "baselines": baseline_sets(groups), "files": []}
    criteria = sorted({str(r.selected["criterion"]) for r in kept
                       if r.selected and r.selected["criterion"] is not None})
    if criteria:
        report["selection_criteria"] = criteria
    section, records, note = "", [], ""
    if reference:
        published, note, by_data = select_published(references.load(reference), kept)
        comparisons = compare(published, rows, by_data)
        section = render_reference(reference, comparisons, note)
        records = reference_records(reference, comparisons)
    out = out or dirs[0]
    if write and out.exists() and not out.is_dir():
        raise ReportError(f"`--out {out}` is a file; give a folder to write the report in.")
    plots: list[Path] = []
    if write:
        out.mkdir(parents=True, exist_ok=True)
        plots = write_plots(out, rows, pareto) if rows else []
        report["files"] = [str(out / name) for name in ("report.md", "report.csv", "report.json")]
        if reference:
            report["files"].append(str(out / f"reference_{reference}.csv"))
        report["files"] += [str(p) for p in plots]
    problems = problems_of(runs, kept, dropped)
    markdown = render_markdown(report, *table_rows(rows), problems, plots, section,
                               without_baselines(rows, groups))
    document = as_json(report, rows, problems)
    if reference:
        document["reference"] = {"name": reference, "note": note or None, "rows": records}
    if write:
        write_csv(out / "report.csv", rows)
        if reference:
            write_reference_csv(out / f"reference_{reference}.csv", records)
        (out / "report.json").write_text(json.dumps(strict_json(document), indent=2,
                                                    default=str) + "\n")
        (out / "report.md").write_text(markdown)
    return markdown, document


def written_line(files: Sequence[str]) -> str:
    """``Wrote report.md, report.csv, ... in <dir>`` (files of one folder)."""
    paths = [Path(f) for f in files]
    return f"Wrote {', '.join(p.name for p in paths)} in {paths[0].parent}"


def main(argv: list[str]) -> int:
    """``mtlbench report``: 0 on success, 1 on bad input (one line on stderr, no traceback).
    The report goes to stdout; where files were written, to stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_reference(args.reference)
        if args.list_references or args.reference == LIST_REFERENCES:
            print(list_references(), end="")
            return 0
        if not args.dirs:
            parser.error("the following arguments are required: DIR")
        markdown, document = make_report(args.dirs, args.out, args.pareto, not args.no_files,
                                         args.reference)
    except (ReportError, OSError) as exc:
        print(f"mtlbench report: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(strict_json(document), indent=2, default=str))
    else:
        print(markdown, end="")
    if document["files"]:
        print(written_line(document["files"]), file=sys.stderr)
    return 0
