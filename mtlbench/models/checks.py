"""Validators of model hyperparameters: each returns the value or raises a one-line
:class:`~mtlbench.errors.ConfigError` that names the parameter and the value found.

Messages read ``Parameter `<name>` must be ... Found `<name> = <value>`.``; raised inside a
backbone's constructor, :func:`mtlbench.instantiate.instantiate_group` prefixes the name with
``model.``. The generic ones live in :mod:`mtlbench.checks` (shared with the strategies).
"""

from __future__ import annotations

import math
from typing import Any

from mtlbench.checks import check_choice, check_int  # noqa: F401 - re-exported for the models
from mtlbench.errors import ConfigError


def check_dropout(name: str, value: Any) -> float:
    """A dropout probability: a real number in [0, 1)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or math.isnan(value) or not 0 <= value < 1:
        raise ConfigError(f"Parameter `{name}` must be in [0, 1). Found `{name} = {value}`.")
    return float(value)


def check_optional_int(name: str, value: Any, *, minimum: int) -> int | None:
    """An integer ≥ ``minimum``, or None (null)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"Parameter `{name}` must be an integer >= {minimum} or null. "
                          f"Found `{name} = {value}`.")
    return value
