"""Which jobs one ``mtlbench train -m`` ran, and how each ended, whatever process ran them.

A sweep's summary and exit status come from this ledger, not from what its sweep dir holds: the
dir may hold jobs of an earlier sweep (a re-run with values reordered or added), and a job that is
refused because its dir holds another configuration's result writes nothing into that dir.
:func:`start` gives the sweep an id (the environment variable :data:`ENV`, which launcher workers
and Slurm jobs inherit) when the multirun starts; each job writes
``<sweep dir>/.mtlbench/<id>/<job num>.json`` when it starts and again when it ends
(:func:`record`; report skips hidden folders). A job killed by the OS stays ``started``.
The sweep's own config (what Hydra writes to ``<sweep dir>/multirun.yaml``, which the next sweep
into the same dir overwrites) is kept beside them as ``multirun.yaml`` (:func:`keep_config`).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from mtlbench.files import write_json_atomic

ENV = "MTLBENCH_SWEEP_ID"
FOLDER = ".mtlbench"
#: A job's states: it began; it wrote its result (or found its finished run); it failed or was
#: refused; it stopped on Ctrl-C.
STATES = ("started", "finished", "failed", "interrupted")


def start() -> str:
    """A new sweep id, set in this process's environment for the jobs it launches."""
    sweep = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
    os.environ[ENV] = sweep
    return sweep


def keep_config(sweep_dir: str | Path, config: Any) -> Path | None:
    """Save ``config`` (the multirun's composed config, ``hydra`` node included) as
    ``<sweep dir>/.mtlbench/<id>/multirun.yaml`` of the current sweep; None outside one."""
    sweep = os.environ.get(ENV)
    if not sweep:
        return None
    from omegaconf import OmegaConf

    path = Path(sweep_dir) / FOLDER / sweep / "multirun.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, path)
    return path


def record(sweep_dir: str | Path, job: int, run_dir: Path, state: str,
           error: str | None = None) -> None:
    """Job ``job``'s ``state`` (:data:`STATES`) in the ledger of the current sweep (nothing
    outside a sweep started by :func:`start`)."""
    sweep = os.environ.get(ENV)
    if not sweep:
        return
    assert state in STATES, state
    entry = {"job": int(job), "dir": str(run_dir), "state": state, "error": error}
    write_json_atomic(Path(sweep_dir) / FOLDER / sweep / f"{int(job)}.json", entry)


def entries(sweep_dir: str | Path) -> list[dict[str, Any]] | None:
    """The current sweep's jobs in job order, or None when it kept no ledger (no id, or no job
    wrote one: e.g. a launcher whose jobs do not inherit the environment)."""
    sweep = os.environ.get(ENV)
    folder = Path(sweep_dir) / FOLDER / str(sweep)
    if not sweep or not folder.is_dir():
        return None
    found = []
    for path in folder.glob("*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            found.append({"job": path.stem, "dir": str(path), "state": "started",
                          "error": "unreadable ledger entry"})
    return sorted(found, key=lambda e: str(e["job"]).zfill(12)) or None
