"""Validators of hyperparameters (strategies, models): each returns the value or raises a
one-line :class:`~mtlbench.errors.ConfigError` that names the parameter and the value found,
``Parameter `<name>` must be ... Found `<name> = <value>`.``; raised inside a constructor,
:func:`mtlbench.instantiate.instantiate_group` prefixes the name with the config group
(``strategy.``, ``model.``). Imports nothing of mtlbench but its errors, so strategies and models
share it without depending on each other.
"""

from __future__ import annotations

import math
from typing import Any

from mtlbench.errors import ConfigError


def check_real(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """Validate a real hyperparameter; returns it as float or raises a one-line
    :class:`ConfigError`."""
    accepted = "a real number or ±inf" if allow_inf else "a finite real number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Parameter `{name}` must be {accepted}. Found `{name} = {value}`."
        ) from None
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or isinstance(value, bool):
        raise ConfigError(f"Parameter `{name}` must be {accepted}. Found `{name} = {value}`.")
    return number


def check_bool(name: str, value: Any) -> bool:
    """Validate a boolean hyperparameter."""
    if not isinstance(value, bool):
        raise ConfigError(f"Parameter `{name}` must be true or false. Found `{name} = {value}`.")
    return value


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Validate an integer hyperparameter ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"Parameter `{name}` must be an integer >= {minimum}. Found `{name} = {value}`."
        )
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Validate a finite real hyperparameter > 0 (≥ 0 with ``allow_zero``)."""
    number = check_real(name, value)
    if number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"Parameter `{name}` must be {bound}. Found `{name} = {value}`.")
    return number


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Validate a string hyperparameter against ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"Parameter `{name}` must be one of {', '.join(choices)}. Found `{name} = {value}`."
        )
    return str(value)
