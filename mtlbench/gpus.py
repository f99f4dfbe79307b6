"""One job per GPU on a multi-GPU machine, with no scheduler: each run with ``trainer.device=auto``
claims a free GPU by an exclusive, non-blocking ``flock`` on ``<lock dir>/gpu<k>.lock`` and holds
it for its life (the kernel releases it when the process ends, even on SIGKILL). So a multirun
with ``hydra/launcher=local_parallel`` (whose ``n_jobs`` defaults to the number of visible GPUs
when there are any, see :func:`parallel_jobs`) runs one job on each GPU, and a job that starts
while every GPU is busy waits for the first one freed. Runs on a one-GPU or CPU-only machine,
and runs with an explicit ``trainer.device``, claim nothing.

The lock dir is ``$MTLBENCH_GPU_LOCKS`` or ``<tmp>/mtlbench-gpus-<uid>``, one per user and
machine. GPUs are counted without importing torch (``CUDA_VISIBLE_DEVICES``, else
``/proc/driver/nvidia/gpus``), so the launcher config resolves fast.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import IO

_held: list[IO[str]] = []  # the claimed lock, open for the process's life


def lock_dir() -> Path:
    """Where the per-GPU lock files live."""
    own = os.environ.get("MTLBENCH_GPU_LOCKS")
    return Path(own) if own else Path(tempfile.gettempdir()) / f"mtlbench-gpus-{os.getuid()}"


def visible_gpus() -> int:
    """The number of CUDA devices this process would see, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else 0


def parallel_jobs() -> int:
    """``n_jobs`` of ``hydra/launcher=local_parallel``: one per visible GPU, else -1 (a job per
    core, joblib's meaning)."""
    return visible_gpus() or -1


def claim_gpu(count: int, *, poll_s: float = 1.0) -> int:
    """Claim one of ``count`` GPUs for this process (index 0 … count − 1): the first whose lock is
    free; if all are taken, wait for one. Idempotent within a process."""
    if _held:
        return int(Path(_held[0].name).stem.removeprefix("gpu"))
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for k in range(count):
            handle = open(folder / f"gpu{k}.lock", "a+")  # noqa: SIM115 - held for the run
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held.append(handle)
            return k
        time.sleep(poll_s)
