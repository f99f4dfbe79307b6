"""The ``scheduler`` config group: a torch LR scheduler, stepped after every step or every epoch.

Each option (``conf/scheduler/*.yaml``) names a ``torch.optim.lr_scheduler`` class by
``_target_`` (null: constant learning rate) with its arguments, plus ``interval``: ``epoch``
(the scheduler steps when an epoch of ``len(train) // batch_size`` steps ends; ``step_size``,
``milestones`` and ``T_max`` count epochs) or ``step`` (after every optimizer step). ``T_max: null``
is the run's length in that unit. Milestones must fall inside the run. The scheduler's state is in
every checkpoint (``mtlbench.checkpoint``), so a resumed run continues the same schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mtlbench.checks import check_positive
from mtlbench.errors import ConfigError
from mtlbench.instantiate import instantiate_group

INTERVALS = ("epoch", "step")


@dataclass
class Schedule:
    """A built scheduler (None: constant learning rate) and when it steps."""

    scheduler: Any
    interval: str

    def after_step(self, step: int, per_epoch: int) -> None:
        """Called after (0-based) step ``step``; steps the scheduler on its interval."""
        if self.scheduler is not None and (self.interval == "step" or (step + 1) % per_epoch == 0):
            self.scheduler.step()


def run_length(total_steps: int, per_epoch: int, interval: str) -> int:
    """The run's length in units of ``interval``."""
    return total_steps if interval == "step" else total_steps // per_epoch


def build_scheduler(cfg: DictConfig | dict[str, Any], optimizer: torch.optim.Optimizer,
                    total_steps: int, per_epoch: int) -> Schedule:
    """Validate the ``scheduler`` node and instantiate it on ``optimizer``."""
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    interval = node.pop("interval", "step")
    if interval not in INTERVALS:
        raise ConfigError(f"`scheduler.interval` must be one of {', '.join(INTERVALS)}. "
                          f"Found `scheduler.interval = {interval}`.")
    if node.get("_target_") is None:
        return Schedule(None, interval)
    length = run_length(total_steps, per_epoch, interval)
    for key in ("step_size", "T_max"):
        value = node.get(key)
        if key == "T_max" and value is None and key in node:
            node[key] = max(length, 1)
        elif value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                    or value < 1):
            raise ConfigError(f"`scheduler.{key}` must be an integer >= 1. "
                              f"Found `scheduler.{key} = {value}`.")
    if "milestones" in node:
        milestones = node["milestones"]
        if length < 2:
            raise ConfigError(f"`scheduler.milestones` must lie inside the run, which is {length} "
                              f"{interval}(s) long: none fits (set scheduler.interval=step, or "
                              f"train longer). Found `scheduler.milestones = {milestones}`.")
        if (not isinstance(milestones, list) or not milestones
                or any(not isinstance(m, int) or isinstance(m, bool) for m in milestones)
                or milestones != sorted(set(milestones))
                or not 0 < milestones[0] <= milestones[-1] < length):
            raise ConfigError(
                f"`scheduler.milestones` must be increasing integers inside the run (1 … "
                f"{length - 1} {interval}s). Found `scheduler.milestones = {milestones}`."
            )
    if node.get("eta_min") is not None:  # the lowest learning rate
        check_positive("scheduler.eta_min", node["eta_min"], allow_zero=True)
    gamma = node.get("gamma")
    if gamma is not None and not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise ConfigError(
            f"`scheduler.gamma` must be in (0, 1]. Found `scheduler.gamma = {gamma}`."
        )
    return Schedule(instantiate_group("scheduler", node, optimizer=optimizer), interval)
