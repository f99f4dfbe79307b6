"""In-memory multi-task datasets: inputs and per-task targets as tensors, batches by index."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping
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


#: ``data.version`` of the generated datasets (``synthetic``, ``gradnorm_toy``): how a problem is
#: drawn from ``seed``. 2: each part from its own stream (:func:`stream`, :func:`rows`). Version 1,
#: one stream in a fixed order (inputs of all splits, teacher, then each task in turn), was
#: mtlbench's until 2026-11-30: another split size or task list gave another problem. Runs
#: recorded without ``data.version`` used it; they are another configuration to ``report`` and to
#: a resume.
GENERATOR_VERSION = 2
#: Rows per draw of :func:`rows` (each block from its own stream).
ROWS_PER_BLOCK = 1024


def check_sizes(**sizes: int) -> None:
    """Each ``data.<key>`` (split sizes, dimensions) an integer ≥ 1, or a one-line
    :class:`ConfigError`."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"`data.{key}` must be an integer >= 1. Found `data.{key} = {value}`.")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``; else the free
    physical pages), or None where neither is known."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(floats_per_row: int, **sizes: int) -> None:
    """A one-line :class:`ConfigError` when the generated splits (``sizes``: ``n_train``,
    ``n_val``, ``n_test``, padded to whole blocks) of ``floats_per_row`` float32 values a row
    (inputs, intermediate values, targets) would not fit in the memory available: generating
    them would otherwise run for a long time and then fail."""
    need = 4 * floats_per_row * sum(padded(n) for n in sizes.values())
    available = available_memory()
    if available is not None and need > available:
        given = ", ".join(f"`data.{k} = {v}`" for k, v in sizes.items())
        raise ConfigError(f"The generated data would need ~{need / 2**30:,.1f} GiB ({given}; "
                          f"{floats_per_row} values a row) and {available / 2**30:,.1f} GiB of "
                          f"memory is available; lower data.n_train, n_val or n_test.")


def check_version(version: int) -> None:
    if version != GENERATOR_VERSION:
        raise ConfigError(f"`data.version` must be {GENERATOR_VERSION} (each part of the problem "
                          f"drawn from its own stream; version 1 is not built any more). "
                          f"Found `data.version = {version}`.")


def stream(seed: int, *part: str) -> torch.Generator:
    """A generator for one named part of a generated problem (e.g. ``"teacher"``, or
    ``"noise", task, split``), seeded from ``seed`` and the part's name by SHA-256: parts do not
    share draws, so one part's size or presence changes no other part."""
    digest = hashlib.sha256("/".join([str(int(seed)), *part]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def padded(n: int) -> int:
    """``n`` rounded up to whole blocks of :data:`ROWS_PER_BLOCK` rows."""
    return ROWS_PER_BLOCK * math.ceil(max(n, 0) / ROWS_PER_BLOCK)


def rows(seed: int, part: tuple[str, ...], n: int, width: int,
         draw: Callable[..., Tensor] = torch.randn) -> Tensor:
    """:func:`padded` (n) rows [·, width] of ``draw`` (``torch.randn`` or ``torch.rand``), block
    k of :data:`ROWS_PER_BLOCK` rows from ``stream(seed, *part, str(k))``: the first blocks are
    the same for every n (a smaller split is a prefix of a larger one). The caller computes on
    whole blocks (:func:`blockwise`) and keeps the first n rows last, so that no row's value
    depends on how many rows there are (a matrix product's rounding may depend on its shape)."""
    blocks = [draw(ROWS_PER_BLOCK, width, generator=stream(seed, *part, str(k)))
              for k in range(padded(n) // ROWS_PER_BLOCK)]
    return torch.cat(blocks) if blocks else torch.empty(0, width)


def blockwise(fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """``fn`` on each block of :data:`ROWS_PER_BLOCK` rows of ``tensors`` (of :func:`padded`
    length), concatenated."""
    if not len(tensors[0]):
        return fn(*tensors)
    return torch.cat([fn(*block) for block in zip(*(t.split(ROWS_PER_BLOCK) for t in tensors),
                                                  strict=True)])


SPLITS = ("train", "val", "test")


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
