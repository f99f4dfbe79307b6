"""How a run's steps were run: one record per process that trained them.

A run that is resumed (after a kill, Ctrl-C or a Slurm requeue) is trained by several processes,
and a resume may change what is not part of the run's fingerprint (``trainer.device``,
``trainer.num_threads``, torch's optimizer implementation:
:data:`mtlbench.rundir.NOT_RESULT_AFFECTING`).
Each process adds a *segment* to the checkpoints it writes and to ``metrics.json``::

    {"steps": [350, 1000], "seconds": 12.3, "device": "cpu", "num_threads": 1,
     "optimizer_implementation": "default", "gradient_engine": {...} or None}

``steps`` [first, end) are the steps this process trained (a resume starts at its checkpoint's
step, so the steps an attempt took after its last checkpoint are not counted: they were trained
again), ``seconds`` its training time. The run's top-level ``device``, ``num_threads``,
``optimizer_implementation`` and ``gradient_engine`` in ``metrics.json`` are :func:`described`:
the one value every segment that trained a step agrees on, and ``null`` where they differ, so
that a run is never labelled by its last segment alone.
"""

from __future__ import annotations

from typing import Any

#: The keys a segment records besides its steps and seconds, each also a key of metrics.json.
DESCRIBED_KEYS = ("device", "num_threads", "optimizer_implementation", "gradient_engine")


def segment(first: int, end: int, seconds: float, how: dict[str, Any]) -> dict[str, Any]:
    """One segment: steps [``first``, ``end``) trained in ``seconds`` the way ``how`` says
    (a value for each of :data:`DESCRIBED_KEYS`; None where not recorded)."""
    return {"steps": [int(first), int(end)], "seconds": round(float(seconds), 3),
            **{key: how.get(key) for key in DESCRIBED_KEYS}}


def unrecorded(end: int, seconds: float) -> dict[str, Any]:
    """Steps [0, ``end``) of a checkpoint written before segments were recorded: their
    ``seconds`` are known, how they ran is not (every described key None)."""
    return segment(0, end, seconds, {})


def trained(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The segments that trained at least one step (all of them if none did: a resume of a run
    whose last checkpoint was its last step only tests it)."""
    return [s for s in segments if s["steps"][1] > s["steps"][0]] or segments


def described(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """For each of :data:`DESCRIBED_KEYS`: the value every :func:`trained` segment has, or None
    where two of them differ or one did not record it."""
    values = {key: [s.get(key) for s in trained(segments)] for key in DESCRIBED_KEYS}
    return {key: v[0] if _same(v) else None for key, v in values.items()}


def uniform(metrics: dict[str, Any]) -> bool:
    """Whether a ``metrics.json``'s :func:`trained` segments ran the same way (every
    :data:`DESCRIBED_KEYS` equal), so its ``train_seconds`` time one setting; true without
    segments (written before they were recorded), false for malformed ones."""
    segments = metrics.get("segments")
    if segments is None:
        return True
    try:
        ran = trained(segments)
        return all(_same([s.get(key) for s in ran]) for key in DESCRIBED_KEYS)
    except (KeyError, TypeError, IndexError, AttributeError):
        return False


def _same(values: list[Any]) -> bool:
    """Whether there is at least one value and all are equal."""
    return bool(values) and all(v == values[0] for v in values)
