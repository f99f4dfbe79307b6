"""Hydra ``instantiate`` for a config group, with constructor errors turned into one-line
messages."""

from __future__ import annotations

import inspect
import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate

from mtlbench.errors import ConfigError, MtlbenchError


def accepted_parameters(target: str) -> list[str]:
    """Keyword parameters of the callable ``target`` (a dotted path)."""
    try:
        signature = inspect.signature(get_object(target))
    except (ValueError, TypeError, ImportError):
        return []
    return [n for n, p in signature.parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"]


def with_group_prefix(message: str, group: str) -> str:
    """Name hyperparameters by their config key: ``Parameter `gamma`… `gamma = nan``` becomes
    ``Parameter `strategy.gamma`… `strategy.gamma = nan``` (names already prefixed are kept; a bare
    value, ``Found `nan```, is not a name)."""
    own = r"(?!" + re.escape(group) + r"\.)"
    message = re.sub(r"(Parameter `)" + own + r"(?=\w)", rf"\1{group}.", message)
    return re.sub(r"(Found `)" + own + r"(?=[\w.]+ = )", rf"\1{group}.", message)


def instantiate_group(group: str, node: Any, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``; a :class:`MtlbenchError` raised by the target is re-raised
    as is, and becomes a :class:`ConfigError` of one line: an unknown keyword (listing the
    accepted parameters), a ``_target_`` that does not import, and a value the target refuses
    with ``ValueError`` / ``OverflowError`` (torch's optimizers: ``Invalid weight_decay value``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, MtlbenchError):
            raise type(cause)(with_group_prefix(str(cause), group)) from None
        target = str(node.get("_target_")) if hasattr(node, "get") else "?"
        if isinstance(cause, ImportError):
            raise ConfigError(f"`{group}._target_` must name an importable class; "
                              f"`{target}` does not import.") from None
        if isinstance(cause, (ValueError, OverflowError)):
            message = " ".join(str(cause).split())
            raise ConfigError(f"`{group}` ({target}) refuses its settings: {message}") from None
        if isinstance(cause, (RuntimeError, MemoryError)) and "allocate" in str(cause):
            message = " ".join(str(cause).split())[:300]
            raise ConfigError(f"`{group}` ({target}) does not fit in this machine's memory with "
                              f"these settings: {message}") from None
        if isinstance(cause, TypeError):
            accepted = [p for p in accepted_parameters(target) if p not in kwargs]
            unknown = [k for k in node if not str(k).startswith("_") and k not in accepted]
            if unknown:
                raise ConfigError(
                    f"`{group}.{unknown[0]}` is not a parameter of {target}; accepted: "
                    f"{', '.join(accepted) or '(none)'}."
                ) from None
        raise
