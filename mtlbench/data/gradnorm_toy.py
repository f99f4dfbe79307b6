"""The GradNorm paper's toy regression problem (Chen et al., ICML 2018, arXiv:1711.02257, §4).

Task i: f_i(x) = σ_i · tanh((B + ε_i) x) with x ∈ R^250, outputs in R^100, B with i.i.d. N(0, 10)
entries shared by all tasks and ε_i with i.i.d. N(0, 3.5) entries per task (the second parameter of
N is read as the variance). The σ_i set each task's loss scale, so with σ = (1, 100) plain summation
is dominated by the second task: the situation GradNorm (and eq. 2-11) is meant to fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List

import torch
from torch import Tensor

from mtlbench.checks import check_positive
from mtlbench.data.base import (
    GENERATOR_VERSION,
    SPLITS,
    DataConfig,
    MultiTaskData,
    Split,
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
class GradNormToyDataConfig(DataConfig):
    _target_: str = "mtlbench.data.gradnorm_toy.build"
    sigmas: List[float] = field(default_factory=lambda: [1.0, 100.0])  # noqa: UP006
    input_dim: int = 250
    output_dim: int = 100
    n_train: int = 8192
    n_val: int = 1024
    n_test: int = 1024
    version: int = GENERATOR_VERSION


@dataclass
class TaskMap:
    """f_i(x) = σ_i · tanh(x (B + ε_i)ᵀ) on rows x [N, input_dim]."""

    sigma: float
    weight: Tensor  # (B + ε_i)ᵀ [input_dim, output_dim]

    def __call__(self, x: Tensor) -> Tensor:
        return self.sigma * torch.tanh(x @ self.weight)


def task_names(num_tasks: int) -> list[str]:
    """Tasks are named ``t0, t1, …`` in the order of ``data.sigmas``."""
    return [f"t{i}" for i in range(num_tasks)]


def build(
    *,
    seed: int,
    tasks: Any,
    sigmas: list[float],
    input_dim: int = 250,
    output_dim: int = 100,
    n_train: int = 8192,
    n_val: int = 1024,
    n_test: int = 1024,
    version: int = GENERATOR_VERSION,
) -> MultiTaskData:
    """Generate the toy problem deterministically from ``seed``; one regression task per σ.
    Each part has its own stream (``data.version`` 2, :func:`mtlbench.data.base.stream`): a
    split's inputs (a smaller split is a prefix of a larger one), B, and each task's ε_i, so
    other split sizes give the same problem on the rows they share, and a σ list that another
    extends (tasks are named by position: ``t0``, ``t1``, …) the same tasks.

    ``tasks`` may give ``loss_scale``/``loss_shift`` for any of ``t0 … t{n-1}``; others use
    defaults.
    """
    check_version(version)
    check_sizes(n_train=n_train, n_val=n_val, n_test=n_test, input_dim=input_dim,
                output_dim=output_dim)
    if len(sigmas) < 1:
        raise ConfigError("`data.sigmas` must list at least one σ (one task per σ).")
    check_fits(input_dim + 2 * len(sigmas) * output_dim, n_train=n_train, n_val=n_val,
               n_test=n_test)
    for i, sigma in enumerate(sigmas):  # (task i's scale)
        check_positive(f"data.sigmas[{i}]", sigma)
    names = task_names(len(sigmas))
    unknown = sorted(set(tasks or {}) - set(names))
    if unknown:
        raise ConfigError(
            f"`data.tasks.{unknown[0]}` is not a task of data=gradnorm_toy with "
            f"{len(sigmas)} sigmas (tasks: {', '.join(names)})."
        )
    sizes = dict(zip(SPLITS, (n_train, n_val, n_test), strict=True))
    x = {split: rows(seed, ("x", split), size, input_dim) for split, size in sizes.items()}
    b = torch.randn(output_dim, input_dim, generator=stream(seed, "B")) * math.sqrt(10.0)
    specs, targets = [], {}
    for name, sigma in zip(names, sigmas, strict=True):
        eps = torch.randn(output_dim, input_dim, generator=stream(seed, "task", name))
        task = TaskMap(float(sigma), (b + eps * math.sqrt(3.5)).T)
        targets[name] = {split: blockwise(task, xs) for split, xs in x.items()}
        cfg = dict((tasks or {}).get(name, {}))
        if cfg.setdefault("kind", "regression") != "regression":
            raise ConfigError(f"`data.tasks.{name}.kind` must be regression (every task of "
                              f"data=gradnorm_toy is). Found `data.tasks.{name}.kind = "
                              f"{cfg['kind']}`.")
        specs.append(task_spec(name, cfg, output_dim))

    return MultiTaskData(specs, *(
        Split(x[split][:n], {name: t[split][:n] for name, t in targets.items()})
        for split, n in sizes.items()))
