"""Crash-safe files of a run: every write goes to a temp file, is fsync'ed, then renamed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temp file in the same folder, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as indented, strict JSON at ``path`` (a non-finite float is an error, never
    ``Infinity``), written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def write_error(run_dir: Path, error: BaseException, traceback: str | None = None) -> None:
    """``<run_dir>/error.json`` = ``{"error": first line of the message, "type": class name}``,
    plus ``"traceback"`` for an unexpected exception."""
    text = str(error).strip()
    record = {"error": text.splitlines()[0] if text else repr(error), "type": type(error).__name__}
    if traceback:
        record["traceback"] = traceback
    write_json_atomic(run_dir / "error.json", record)
