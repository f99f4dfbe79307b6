"""Loss-balancing strategies: one file each, selected by Hydra's ``_target_``
(``conf/strategy/``)."""

from mtlbench.strategies.base import GradientStats, SetupContext, Strategy

__all__ = ["GradientStats", "SetupContext", "Strategy"]
