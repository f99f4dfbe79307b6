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
from mtlbench.data.base import DataConfig, MultiTaskData, TaskConfig, task_spec
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
    tasks: Dict[str, SyntheticTaskConfig] = field(default_factory=dict)  # noqa: UP006


def _targets(kind: str, cfg: Any, h: Tensor, gen: torch.Generator, noise: float) -> Tensor:
    """Targets of one task from the shared teacher representation ``h`` [N, teacher_dim]."""
    n, width = h.shape
    if kind == "classification":
        k = int(cfg["num_classes"])
        readout = torch.randn(width, k, generator=gen) * 3.0 / math.sqrt(width)
        log_prior = -float(cfg.get("class_skew", 0.0)) * torch.arange(k, dtype=torch.float32)
        logits = h @ readout + log_prior
        gumbel = -torch.log(-torch.log(torch.rand(n, k, generator=gen).clamp_min(1e-20)))
        return (logits + noise * gumbel).argmax(dim=1)
    d = int(cfg.get("dim", 1))
    readout = torch.randn(width, d, generator=gen) * 2.0 / math.sqrt(width)
    clean = h @ readout + 0.5 * torch.randn(1, d, generator=gen)
    y = clean + noise * torch.randn(n, d, generator=gen)
    return float(cfg.get("target_scale", 1.0)) * y


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
) -> MultiTaskData:
    """Generate the dataset deterministically from ``seed``.

    Parameters:
        seed: the generator seed (same seed, same data).
        tasks: mapping task name → :class:`SyntheticTaskConfig`-like mapping.
        n_train, n_val, n_test: split sizes.
        input_dim: dimension of x ~ N(0, I).
        teacher_dim: width of the shared teacher representation.
        noise: label noise (Gumbel temperature for classes, Gaussian std for regression).
    """
    for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test),
                       ("input_dim", input_dim), ("teacher_dim", teacher_dim)):
        if value < 1:
            raise ConfigError(
                f"`data.{key}` must be an integer >= 1. Found `data.{key} = {value}`."
            )
    check_positive("data.noise", noise, allow_zero=True)
    for name, cfg in (tasks or {}).items():
        check_positive(f"data.tasks.{name}.class_skew", cfg.get("class_skew", 0.0),
                       allow_zero=True)
        check_real(f"data.tasks.{name}.target_scale", cfg.get("target_scale", 1.0))
    if not tasks:
        raise ConfigError("`data.tasks` must define at least one task.")
    gen = torch.Generator().manual_seed(int(seed))
    n = n_train + n_val + n_test
    x = torch.randn(n, input_dim, generator=gen)
    w1 = torch.randn(input_dim, 2 * teacher_dim, generator=gen) / math.sqrt(input_dim)
    w2 = torch.randn(2 * teacher_dim, teacher_dim, generator=gen) * 1.5 / math.sqrt(2 * teacher_dim)
    h = torch.tanh(torch.tanh(x @ w1) @ w2)

    specs, targets = [], {}
    for name, cfg in tasks.items():
        kind = str(cfg["kind"])
        if kind == "classification" and cfg.get("num_classes") is None:
            raise ConfigError(
                f"`data.tasks.{name}.num_classes` must be set for a classification task."
            )
        out_dim = cfg["num_classes"] if kind == "classification" else cfg.get("dim", 1)
        specs.append(task_spec(name, cfg, out_dim, SYNTHETIC_TASK_KEYS))
        targets[name] = _targets(kind, cfg, h, gen, noise)

    return MultiTaskData.from_rows(specs, x, targets, n_train, n_val)
