"""Model selection on the validation split (``trainer.select``).

``last`` reports the test metrics of the final model. ``best_val`` evaluates the model on the
validation split every ``trainer.eval_every``, keeps the parameters of the best evaluation by
``trainer.select_metric``, and reports the *test* metrics of that model:

* ``mean_accuracy``: mean validation accuracy over the classification tasks (higher is better;
  Kurin et al. 2022, App. C.1.1, select this way);
* ``val/<metric>/<task>``: one task's validation metric (``accuracy`` higher, ``mse``/``loss``
  lower is better);
* ``delta_m``: Δm% = (100/T) Σ_t (−1)^{h_t} (M_t − R_t) / R_t against the single-task values R_t in
  ``trainer.select_reference`` (task → value of its metric; h_t = 1 where higher is better);
  lower is better.

Ties keep the earlier evaluation. Everything here reads metric dicts; nothing trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mtlbench.errors import ConfigError
from mtlbench.tasks import TaskSpec

SELECT = ("last", "best_val")
HIGHER_IS_BETTER = {"accuracy": True, "mse": False, "loss": False}


@dataclass
class Criterion:
    """A validation criterion: its name, and a value to minimize from val metrics."""

    name: str
    tasks: list[TaskSpec]
    reference: dict[str, float] | None = None

    def value(self, val: dict[str, dict[str, float]]) -> float:
        """The criterion as a number to *minimize* (NaN metrics count as +inf)."""
        if self.name == "mean_accuracy":
            accs = [val[t.name]["accuracy"] for t in self.tasks if t.kind == "classification"]
            v = -sum(accs) / len(accs)
        elif self.name == "delta_m":
            assert self.reference is not None
            terms = []
            for t in self.tasks:
                sign = -1.0 if HIGHER_IS_BETTER[t.metric] else 1.0
                ref = self.reference[t.name]
                terms.append(sign * (val[t.name][t.metric] - ref) / ref)
            v = 100.0 * sum(terms) / len(terms)
        else:
            _, metric, task = self.name.split("/")
            v = val[task][metric] * (-1.0 if HIGHER_IS_BETTER[metric] else 1.0)
        return v if math.isfinite(v) else math.inf

    def reported(self, value: float) -> float:
        """The criterion in its natural sign (accuracies positive) from :meth:`value`."""
        flip = self.name == "mean_accuracy" or (
            self.name.startswith("val/") and HIGHER_IS_BETTER[self.name.split("/")[1]])
        return -value if flip else value


def build_criterion(tcfg: Any, tasks: list[TaskSpec], has_val: bool) -> Criterion | None:
    """The criterion of ``trainer.select_metric`` (None for ``select=last``), or a one-line
    :class:`ConfigError`."""
    if tcfg.select not in SELECT:
        raise ConfigError(f"`trainer.select` must be one of {', '.join(SELECT)}. "
                          f"Found `trainer.select = {tcfg.select}`.")
    if tcfg.select == "last":
        return None
    if not has_val:
        raise ConfigError("`trainer.select=best_val` needs a validation split, but this data has "
                          "none (set data.val_fraction > 0, or trainer.select=last).")
    name = str(tcfg.select_metric)
    names = [t.name for t in tasks]
    accepted = ("mean_accuracy, delta_m, or val/<metric>/<task> with a task of "
                f"{', '.join(names)}")
    if name == "mean_accuracy":
        if not any(t.kind == "classification" for t in tasks):
            raise ConfigError("`trainer.select_metric = mean_accuracy` needs a classification "
                              "task; none is present.")
        return Criterion(name, tasks)
    if name == "delta_m":
        ref = dict(tcfg.select_reference or {})
        missing = [n for n in names if n not in ref]
        if missing:
            raise ConfigError(f"`trainer.select_metric = delta_m` needs "
                              f"`trainer.select_reference.<task>` for {', '.join(missing)} "
                              f"(e.g. +trainer.select_reference.{missing[0]}=0.9).")
        bad = [n for n in names if not (isinstance(ref[n], (int, float)) and ref[n] != 0)]
        if bad:
            raise ConfigError(f"`trainer.select_reference.{bad[0]}` must be a nonzero number. "
                              f"Found `trainer.select_reference.{bad[0]} = {ref[bad[0]]}`.")
        return Criterion(name, tasks, {n: float(ref[n]) for n in names})
    parts = name.split("/")
    by_name = {t.name: t for t in tasks}
    if (len(parts) != 3 or parts[0] != "val" or parts[2] not in by_name
            or parts[1] not in ("loss", by_name[parts[2]].metric)):
        raise ConfigError(f"`trainer.select_metric` must be {accepted}. "
                          f"Found `trainer.select_metric = {name}`.")
    return Criterion(name, tasks)
