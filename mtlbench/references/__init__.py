"""Published numbers shipped with mtlbench: one CSV per paper table (``<name>.csv`` here).

Transcribed from the papers' tables as collected in the project's design notes; nothing is
derived or rounded. Columns (one line per published number):

``source``
    the citation (authors, title, venue, arXiv id, table).
``protocol``
    the paper's training / evaluation protocol in brief (it differs from mtlbench's defaults).
``data``
    mtlbench's data config closest to the paper's dataset (``multimnist``, ``multifashion``,
    ``multifashion_mnist``).
``method``
    the method as the paper names it.
``strategy``, ``strategy_params``
    mtlbench's strategy for it (empty when mtlbench has none) and the ``key=value`` strategy
    settings a run needs to match (space separated; e.g. ``params=representation`` for MGDA-UB).
``task``, ``our_task``
    the paper's task name and mtlbench's task(s): one task, or ``a,b`` for a number computed over
    several tasks (an average accuracy: the mean of the tasks' accuracies per run; a Δm%: over
    those tasks only). Empty ``our_task``: not a per-task number (an epoch time).
``metric``, ``unit``
    ``accuracy`` (``%``: mtlbench's accuracies are fractions, shown ×100), ``epoch_seconds_min`` /
    ``epoch_seconds_max`` (a published range, ``s``), ``delta_m_pct_higher_better`` (a Δm% whose
    sign is the negative of mtlbench's).
``value``, ``sd``, ``ci95``
    the published number and, where the paper gives one, its standard deviation or 95% CI
    half-width.
``note``
    what was inferred in the mapping (task order, hyperparameter names).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

#: Columns every reference CSV has, in order.
COLUMNS = ("source", "protocol", "data", "method", "strategy", "strategy_params", "task",
           "our_task", "metric", "unit", "value", "sd", "ci95", "note")


@dataclass(frozen=True)
class Published:
    """One published number (one line of a reference CSV); see the module docstring."""

    source: str
    protocol: str
    data: str
    method: str
    strategy: str
    strategy_params: dict[str, str]
    task: str
    our_tasks: tuple[str, ...]
    metric: str
    unit: str
    value: float
    sd: float | None
    ci95: float | None
    note: str


def protocol(name: str) -> dict[str, list[object]]:
    """The settings of table ``name``'s published protocol (``protocols.yaml``): config key →
    the values that run it ({} when the file names none)."""
    import yaml

    text = resources.files(__name__).joinpath("protocols.yaml").read_text(encoding="utf-8")
    settings = (yaml.safe_load(text) or {}).get(name) or {}
    return {key: value if isinstance(value, list) else [value] for key, value in settings.items()}


def names() -> list[str]:
    """The shipped reference tables, sorted (CSV file names without ``.csv``)."""
    return sorted(entry.name.removesuffix(".csv") for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(".csv"))


def load(name: str) -> list[Published]:
    """The lines of reference table ``name``, in file order (KeyError when there is none)."""
    if name not in names():
        raise KeyError(name)
    text = resources.files(__name__).joinpath(f"{name}.csv").read_text(encoding="utf-8")
    return [_parse(line) for line in csv.DictReader(io.StringIO(text))]


def _parse(line: dict[str, str]) -> Published:
    """One CSV line → :class:`Published` (empty ``sd`` / ``ci95``: None)."""
    params = dict(item.split("=", 1) for item in line["strategy_params"].split())
    return Published(
        source=line["source"], protocol=line["protocol"], data=line["data"],
        method=line["method"], strategy=line["strategy"], strategy_params=params,
        task=line["task"], our_tasks=tuple(t for t in line["our_task"].split(",") if t),
        metric=line["metric"], unit=line["unit"], value=float(line["value"]),
        sd=float(line["sd"]) if line["sd"] else None,
        ci95=float(line["ci95"]) if line["ci95"] else None, note=line["note"])
