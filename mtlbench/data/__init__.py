"""Datasets: each module's ``build(*, seed, tasks, ...)`` returns an in-memory
:class:`MultiTaskData`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtlbench.data.base import MultiTaskData, Split
from mtlbench.instantiate import instantiate_group

__all__ = ["MultiTaskData", "Split", "build_data"]


def build_data(cfg: DictConfig | dict[str, Any], seed: int) -> MultiTaskData:
    """Instantiate the ``data`` config group (its ``_target_`` builder) and apply ``data.only``."""
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    only = node.pop("only", None)
    data = instantiate_group("data", node, seed=seed, _convert_="all")
    return data.select(only)
