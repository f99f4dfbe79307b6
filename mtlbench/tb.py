"""TensorBoard logging: tag names, the HParams entry of a run, and a custom-scalars layout.

Tags: ``train/loss/<task>``, ``train/weight/<task>``, ``train/grad_norm/<task>``,
``train/grad_cos/<a>__<b>``, ``val/<metric>/<task>``, ``test/<metric>/<task>``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import custom_scalars, hparams

HParamValue = float | int | str | bool


def flatten_hparams(node: Mapping[str, Any], prefix: str = "") -> dict[str, HParamValue]:
    """Scalar leaves of a nested mapping as ``{"a.b.c": value}``; ``_target_`` keys are skipped."""
    flat: dict[str, HParamValue] = {}
    for key, value in node.items():
        if key == "_target_":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        elif isinstance(value, (list, tuple)):
            flat[name] = str(list(value))
    return flat


#: What ±inf hyperparameters (γ = ±inf) are written as: TensorBoard drops non-finite HParams values
#: (they are not JSON-serializable), and a string in a numeric column breaks its interval filter.
INF_HPARAM = sys.float_info.max


def hparams_values(hparam_dict: Mapping[str, Any]) -> dict[str, HParamValue]:
    """HParams values whose type never depends on the value, so one column has one type in a sweep.

    ±inf becomes ±:data:`INF_HPARAM` (±1.8e308: sorts and filters as ±inf would); nan, never a valid
    hyperparameter here, becomes the string ``"nan"``.
    """
    values: dict[str, HParamValue] = {}
    for key, value in hparam_dict.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = "nan" if math.isnan(value) else math.copysign(INF_HPARAM, value)
        values[key] = value
    return values


class RunLogger:
    """A SummaryWriter writing into the run directory itself (HParams included, no nested run)."""

    def __init__(self, run_dir: Path, task_names: list[str], purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.task_names = task_names
        self._write_layout()

    def _write_layout(self) -> None:
        """Custom-scalars layout: every task's loss / weight / grad norm on one shared chart."""
        charts = {
            kind: ["Multiline", [f"train/{kind}/{t}" for t in self.task_names]]
            for kind in ("loss", "weight", "grad_norm")
        }
        self.writer.file_writer.add_summary(custom_scalars({"tasks": charts}))

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def hparams(self, hparam_dict: Mapping[str, Any], metric_dict: Mapping[str, float]) -> None:
        """Write the HParams session of this run into its own directory (not a nested run).

        Only the session (start and end) is written, not the per-run experiment summary:
        TensorBoard takes the columns of an arbitrary run's experiment summary when one exists, so
        in a sweep mixing strategies the other strategies' hyperparameters would vanish. Without
        it, TensorBoard builds the table from every run's hyperparameters and scalar tags.
        """
        _, ssi, sei = hparams(hparams_values(hparam_dict), dict(metric_dict))
        for summary in (ssi, sei):
            self.writer.file_writer.add_summary(summary)
        for name, value in metric_dict.items():
            self.writer.add_scalar(name, value)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
