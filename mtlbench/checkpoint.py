"""Atomic checkpoints in ``<run_dir>/checkpoints/``; a re-run resumes from the newest one.

A checkpoint holds the model, optimizer, LR scheduler and strategy state, the RNG states of torch
(CPU and CUDA), numpy and Python, and the step. The data order is a pure function of (seed, step),
so the step is the data position. Files are written to a temp file, fsync'ed and renamed, so a crash
during a write leaves the previous checkpoint intact; they load with ``weights_only=True``.
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlbench.errors import MtlbenchError
from mtlbench.files import atomic_write_bytes

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(MtlbenchError):
    """A checkpoint in the run directory cannot be loaded."""


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``run_dir``, oldest first."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: Any, strategy: Any, keep: int, counters: dict[str, float] | None = None,
         config: dict[str, Any] | None = None, selection: dict[str, Any] | None = None,
         scaler: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoints/step_<step>.pt`` atomically and delete all but the newest ``keep``.

    ``counters``: the loop's own running counts (e.g. skipped steps), restored by :func:`restore`;
    ``config``: the result-affecting config values (:func:`mtlbench.rundir.result_config`), which a
    resume must match; ``selection``: ``trainer.select=best_val``'s best evaluation so far (step,
    value, model state), or None; ``scaler``: the float16 gradient scaler's state, or None.
    """
    state = {
        "step": step,
        "config": dict(config or {}),
        "counters": dict(counters or {}),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "strategy": strategy.state_dict(),
        **({"loss_weighting": stacked.state_dict()} if (stacked := getattr(
            strategy, "loss_weighting", None)) is not None else {}),
        "rng": _rng_state(),
        "selection": selection,
        "scaler": scaler,
    }
    path = run_dir / CHECKPOINT_DIR / f"step_{step:08d}.pt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict[str, Any]:
    """Read checkpoint ``path`` (``weights_only=True``); a file that does not load is corrupt."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means corrupt
        raise CheckpointError(
            f"Checkpoint {path} is corrupt ({type(exc).__name__}); refusing to resume. "
            f"Delete it to resume from an older one, or use a new hydra.run.dir to start fresh."
        ) from None


#: Parameter-group keys that pick torch's optimizer implementation (``optimizer.foreach`` /
#: ``optimizer.fused``): not in the fingerprint (they change float rounding at most), so a resume
#: may change them, and its steps must then run the way its config and its segment say.
IMPLEMENTATION_KEYS = ("foreach", "fused")


def configured_implementation(saved: dict[str, Any],
                              optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state dict with each parameter group's :data:`IMPLEMENTATION_KEYS` as
    ``optimizer`` was built (``load_state_dict`` would otherwise bring back the checkpoint's, and
    it moves the step counters to where the configured implementation keeps them)."""
    groups = [{**old, **{key: new[key] for key in IMPLEMENTATION_KEYS if key in new}}
              for old, new in zip(saved["param_groups"], optimizer.param_groups, strict=False)]
    return {**saved, "param_groups": groups}


def restore(state: dict[str, Any], path: Path, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any,
            strategy: Any) -> tuple[int, dict[str, int]]:
    """Put a loaded checkpoint's state into the run; returns its step and the loop's counters.

    The config was matched before (:meth:`mtlbench.rundir.RunDir.inspect`), so a state that does
    not fit means the code changed between the two runs, not that the file is damaged.
    """
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(configured_implementation(state["optimizer"], optimizer))
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        strategy.load_state_dict(state["strategy"])
        if getattr(strategy, "loss_weighting", None) is not None:
            strategy.loss_weighting.load_state_dict(state.get("loss_weighting", {}))
        _set_rng_state(state["rng"])
    except Exception as exc:  # noqa: BLE001 - reported as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"Checkpoint {path} loads but does not fit this run ({type(exc).__name__}: "
            f"{first[:200]}); was it written by another mtlbench version? Use trainer.resume=fresh "
            "or another hydra.run.dir."
        ) from None
    return int(state["step"]), dict(state.get("counters", {}))
