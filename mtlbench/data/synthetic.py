"""A seeded synthetic multi-task problem mixing classification and regression of different units.

One random "teacher" network maps the input to a shared representation h = tanh(W₂ tanh(W₁ x));
every task reads h through its own random linear map, so a shared backbone helps every task. The
defaults are the "different units" situation of eq. (1): a binary and a 10-way classification (with
non-uniform class frequencies, so prior loss (eq. 3) differs from initial loss (eq. 2)), a 1-d
regression with targets of order 1 and a 3-d regression with targets of order 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from mtlbench.checks import check_positive, check_real
from mtlbench.data.base import (
    GENERATOR_VERSION,
    SPLITS,
    DataConfig,
    MultiTaskData,
    Split,
    TaskConfig,
    blockwise,
    check_fits,
    check_sizes,
    check_version,
    rows,
    stream,
    task_spec,
)
from mtlbench.errors import ConfigError


@dataclass
class SyntheticTaskConfig(TaskConfig):
    """``data.tasks.<name>`` of ``data=synthetic``.

    ``num_classes`` (classification) or ``dim`` (regression) sets the output size; ``target_scale``
    multiplies regression targets; ``class_skew`` ≥ 0 makes class k a priori e^(-skew·k) times as
    frequent as class 0 (0 = balanced).
    """

    num_classes: Optional[int] = None  # noqa: UP045
    dim: int = 1
    target_scale: float = 1.0
    class_skew: float = 0.0


SYNTHETIC_TASK_KEYS = tuple(f.name for f in fields(SyntheticTaskConfig))


@dataclass
class SyntheticDataConfig(DataConfig):
    _target_: str = "mtlbench.data.synthetic.build"
    n_train: int = 4096
    n_val: int = 1024
    n_test: int = 1024
    input_dim: int = 32
    teacher_dim: int = 16
    noise: float = 0.1
    version: int = GENERATOR_VERSION
    tasks: Dict[str, SyntheticTaskConfig] = field(default_factory=dict)  # noqa: UP006


def _task_targets(name: str, kind: str, cfg: Any, seed: int, hs: dict[str, Tensor],
                  noise: float) -> dict[str, Tensor]:
    """One task's targets in each split from the teacher representation of its rows
    (``hs[split]`` [padded N, teacher_dim]): its read-out from ``stream(seed, "task", name)``,
    its noise from ``rows(seed, ("noise", name, split), …)``; computed block by block."""
    width = next(iter(hs.values())).shape[1]
    gen = stream(seed, "task", name)
    if kind == "classification":
        k = int(cfg["num_classes"])
        readout = torch.randn(width, k, generator=gen) * 3.0 / math.sqrt(width)
        log_prior = -float(cfg.get("class_skew", 0.0)) * torch.arange(k, dtype=torch.float32)

        def classes(h: Tensor, u: Tensor) -> Tensor:
            gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
            return (h @ readout + log_prior + noise * gumbel).argmax(dim=1)
        return {split: blockwise(classes, h, rows(seed, ("noise", name, split), len(h), k,
                                                  torch.rand))
                for split, h in hs.items()}
    d = int(cfg.get("dim", 1))
    readout = torch.randn(width, d, generator=gen) * 2.0 / math.sqrt(width)
    offset = 0.5 * torch.randn(1, d, generator=gen)
    scale = float(cfg.get("target_scale", 1.0))

    def values(h: Tensor, e: Tensor) -> Tensor:
        return scale * (h @ readout + offset + noise * e)
    return {split: blockwise(values, h, rows(seed, ("noise", name, split), len(h), d))
            for split, h in hs.items()}


def build(
    *,
    seed: int,
    tasks: Any,
    n_train: int = 4096,
    n_val: int = 1024,
    n_test: int = 1024,
    input_dim: int = 32,
    teacher_dim: int = 16,
    noise: float = 0.1,
    version: int = GENERATOR_VERSION,
) -> MultiTaskData:
    """Generate the dataset deterministically from ``seed``, each part from its own stream
    (``data.version`` 2, :func:`mtlbench.data.base.stream`): a split's inputs (a smaller split is
    a prefix of a larger one), the teacher, each task's read-out, each task's noise in each split.
    So other split sizes or another task list give the same problem on the rows and tasks they
    share.

    Parameters:
        seed: the generator seed (same seed, same data).
        tasks: mapping task name → :class:`SyntheticTaskConfig`-like mapping.
        n_train, n_val, n_test: split sizes.
        input_dim: dimension of x ~ N(0, I).
        teacher_dim: width of the shared teacher representation.
        noise: label noise (Gumbel temperature for classes, Gaussian std for regression).
        version: :data:`mtlbench.data.base.GENERATOR_VERSION` (the only one built).
    """
    check_version(version)
    check_sizes(n_train=n_train, n_val=n_val, n_test=n_test, input_dim=input_dim,
                teacher_dim=teacher_dim)
    check_positive("data.noise", noise, allow_zero=True)
    for name, cfg in (tasks or {}).items():
        check_positive(f"data.tasks.{name}.class_skew", cfg.get("class_skew", 0.0),
                       allow_zero=True)
        check_real(f"data.tasks.{name}.target_scale", cfg.get("target_scale", 1.0))
    if not tasks:
        raise ConfigError("`data.tasks` must define at least one task.")
    outputs = sum(int(cfg.get("num_classes") or 0) or int(cfg.get("dim", 1))
                  for cfg in tasks.values())  # targets and their noise, a row
    check_fits(input_dim + 5 * teacher_dim + 2 * outputs, n_train=n_train, n_val=n_val,
               n_test=n_test)
    sizes = dict(zip(SPLITS, (n_train, n_val, n_test), strict=True))
    x = {split: rows(seed, ("x", split), size, input_dim) for split, size in sizes.items()}
    gen = stream(seed, "teacher")
    w1 = torch.randn(input_dim, 2 * teacher_dim, generator=gen) / math.sqrt(input_dim)
    w2 = torch.randn(2 * teacher_dim, teacher_dim, generator=gen) * 1.5 / math.sqrt(2 * teacher_dim)
    hs = {split: blockwise(lambda xs: torch.tanh(torch.tanh(xs @ w1) @ w2), xs)
          for split, xs in x.items()}

    specs, targets = [], {}
    for name, cfg in tasks.items():
        kind = str(cfg["kind"])
        if kind == "classification" and cfg.get("num_classes") is None:
            raise ConfigError(
                f"`data.tasks.{name}.num_classes` must be set for a classification task."
            )
        out_dim = cfg["num_classes"] if kind == "classification" else cfg.get("dim", 1)
        specs.append(task_spec(name, cfg, out_dim, SYNTHETIC_TASK_KEYS))
        targets[name] = _task_targets(name, kind, cfg, seed, hs, noise)

    return MultiTaskData(specs, *(
        Split(x[split][:n], {name: t[split][:n] for name, t in targets.items()})
        for split, n in sizes.items()))
