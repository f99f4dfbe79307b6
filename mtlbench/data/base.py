"""In-memory multi-task datasets: inputs and per-task targets as tensors, batches by index."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.tasks import TaskSpec


@dataclass
class TaskConfig:
    """Schema shared by every task of every dataset (``data.tasks.<name>``)."""

    kind: str = "classification"
    loss_scale: float = 1.0
    loss_shift: float = 0.0


@dataclass
class DataConfig:
    """Schema shared by every dataset: the builder, the task table and ``only`` (single-task
    runs)."""

    _target_: str = "???"
    only: Optional[str] = None  # noqa: UP045 (OmegaConf needs typing.Optional)
    tasks: Dict[str, TaskConfig] = field(default_factory=dict)  # noqa: UP006


@dataclass
class Split:
    """One split: ``inputs`` [N, *input_shape] and ``targets[task]`` ([N] int64 or [N, d] float)."""

    inputs: Tensor
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def batch(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Rows ``index`` of the inputs and of every target (no per-sample Python work)."""
        return self.inputs[index], {name: t[index] for name, t in self.targets.items()}

    def to(self, device: torch.device | str) -> Split:
        return Split(self.inputs.to(device), {k: v.to(device) for k, v in self.targets.items()})


@dataclass
class MultiTaskData:
    """A dataset: task specs (in a fixed order) and the train / validation / test splits."""

    tasks: list[TaskSpec]
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    def select(self, only: str | None) -> MultiTaskData:
        """Keep only task ``only`` (single-task baselines); ``None`` keeps every task."""
        if only is None:
            return self
        names = [t.name for t in self.tasks]
        if only not in names:
            raise ConfigError(
                f"`data.only` must name a task of this dataset ({', '.join(names)}). "
                f"Found `data.only = {only}`."
            )

        def keep(split: Split) -> Split:
            return Split(split.inputs, {only: split.targets[only]})

        tasks = [t for t in self.tasks if t.name == only]
        return MultiTaskData(tasks, keep(self.train), keep(self.val), keep(self.test))

    def to(self, device: torch.device | str) -> MultiTaskData:
        return MultiTaskData(self.tasks, self.train.to(device), self.val.to(device),
                             self.test.to(device))

    @classmethod
    def from_rows(cls, tasks: list[TaskSpec], inputs: Tensor, targets: dict[str, Tensor],
                  n_train: int, n_val: int) -> MultiTaskData:
        """Rows [0, n_train) are the training split, the next ``n_val`` validation, the rest
        test."""
        bounds = (0, n_train, n_train + n_val, inputs.shape[0])

        def rows(lo: int, hi: int) -> Split:
            return Split(inputs[lo:hi], {k: v[lo:hi] for k, v in targets.items()})

        return cls(tasks, *(rows(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)))


#: The ``data.tasks.<name>`` keys every dataset reads (:class:`TaskConfig`).
TASK_KEYS = tuple(f.name for f in fields(TaskConfig))


def task_spec(name: str, cfg: Mapping[str, Any], out_dim: int,
              keys: tuple[str, ...] = TASK_KEYS) -> TaskSpec:
    """Build a :class:`TaskSpec` from a ``data.tasks.<name>`` entry and the task's output size;
    a key the dataset does not read (``keys``; e.g. one added with ``+``) is a
    :class:`ConfigError`, not silently ignored."""
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        raise ConfigError(f"`data.tasks.{name}.{unknown[0]}` is not a task setting of this "
                          f"dataset; accepted: {', '.join(keys)}.")
    return TaskSpec(
        name=name,
        kind=str(cfg["kind"]),
        out_dim=int(out_dim),
        loss_scale=float(cfg.get("loss_scale", 1.0)),
        loss_shift=float(cfg.get("loss_shift", 0.0)),
    )
