"""Task heads: K logits for classification, d outputs for regression. They know nothing of
strategies."""

from __future__ import annotations

from torch import nn

from mtlbench.tasks import TaskSpec


def make_head(task: TaskSpec, in_dim: int, hidden: int = 0) -> nn.Module:
    """A linear head ``in_dim → task.out_dim``, or ``in_dim → hidden → ReLU → out_dim`` if
    ``hidden``."""
    if hidden <= 0:
        return nn.Linear(in_dim, task.out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, task.out_dim))
