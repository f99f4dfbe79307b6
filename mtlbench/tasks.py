"""Task specifications: a task's kind, its loss (with the loss transform), metrics and loss
statistics.

Every statistic a strategy uses (initial loss, prior loss, real-time loss) is of the *transformed*
loss ``loss_scale * raw_loss + loss_shift``; the two knobs exist to reproduce the post's invariance
claims (scale: eq. 2-4, 7, 10-11; shift: eq. 10-11 only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlbench.errors import ConfigError

TaskKind = Literal["classification", "regression"]
TASK_KINDS: tuple[str, ...] = ("classification", "regression")


@dataclass(frozen=True)
class TaskSpec:
    """One task of a multi-task problem.

    Parameters:
        name: the task's name (a key of ``data.tasks``).
        kind: ``classification`` (K-way cross-entropy, metric accuracy) or ``regression``
            (mean squared error averaged over the batch *and* the ``d`` output dimensions, metric
            mse).
        out_dim: K (number of classes) for classification, d (target dimension) for regression.
        loss_scale: λ > 0 in ``λ * raw_loss + c``.
        loss_shift: c in ``λ * raw_loss + c``.
    """

    name: str
    kind: str
    out_dim: int
    loss_scale: float = 1.0
    loss_shift: float = 0.0

    def __post_init__(self) -> None:
        key = f"data.tasks.{self.name}"
        if self.kind not in TASK_KINDS:
            raise ConfigError(
                f"`{key}.kind` must be one of {', '.join(TASK_KINDS)}. Found `{self.kind}`."
            )
        if self.kind == "classification" and self.out_dim < 2:
            raise ConfigError(
                f"`{key}.num_classes` must be an integer >= 2 for a classification task. "
                f"Found `{self.out_dim}`."
            )
        if self.out_dim < 1:
            raise ConfigError(f"`{key}.dim` must be an integer >= 1. Found `{self.out_dim}`.")
        if not (math.isfinite(self.loss_scale) and self.loss_scale > 0):
            raise ConfigError(
                f"`{key}.loss_scale` must be a finite number > 0. Found `{self.loss_scale}`."
            )
        if not math.isfinite(self.loss_shift):
            raise ConfigError(
                f"`{key}.loss_shift` must be a finite number. Found `{self.loss_shift}`."
            )

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def metric(self) -> str:
        """Name of the task's test metric: ``accuracy`` (higher is better) or ``mse`` (lower)."""
        return "accuracy" if self.is_classification else "mse"

    def transform(self, raw: Tensor | float) -> Tensor | float:
        """Apply the loss transform ``loss_scale * raw + loss_shift`` (``raw`` itself for the
        identity, 1 · x + 0 = x: no two extra operations in every step's graph)."""
        if self.loss_scale == 1.0 and self.loss_shift == 0.0 and isinstance(raw, Tensor):
            return raw
        return self.loss_scale * raw + self.loss_shift

    def raw_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Untransformed loss. ``output``: [B, out_dim]; ``target``: [B] (int64) or [B, d]."""
        if self.is_classification:
            return F.cross_entropy(output, target)
        return F.mse_loss(output, target)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The task's training loss ``loss_scale * raw_loss + loss_shift`` (a scalar)."""
        return self.transform(self.raw_loss(output, target))

    def metric_value(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean accuracy (classification) or mean squared error (regression) over the batch."""
        if self.is_classification:
            return (output.argmax(dim=-1) == target).float().mean()
        return F.mse_loss(output, target)

    def derived_init_loss(self, targets: Tensor) -> float:
        """Eq. (2), derived: the loss of a model whose outputs are exactly 0.

        Classification: zero logits give the uniform softmax, so L = log K. Regression: the
        prediction 0 gives L = E||y||² / d (the loss averages over the d dimensions). Returned after
        the transform.
        """
        if self.is_classification:
            raw = math.log(self.out_dim)
        else:
            raw = targets.double().pow(2).mean().item()
        return float(self.transform(raw))

    def prior_loss(self, targets: Tensor) -> float:
        """Eq. (3): the loss of a model that knows only the label distribution of ``targets``.

        Classification with class frequencies p_k: the entropy -Σ p_k log p_k. Regression:
        predicting the mean μ gives E||y - μ||² / d. Returned after the transform.
        """
        if self.is_classification:
            counts = torch.bincount(targets.long(), minlength=self.out_dim).double()
            p = counts / counts.sum()
            p = p[p > 0]
            raw = float(-(p * p.log()).sum())
        else:
            y = targets.double()
            raw = (y - y.mean(dim=0)).pow(2).mean().item()
        return float(self.transform(raw))
