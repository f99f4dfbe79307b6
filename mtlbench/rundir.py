"""Who owns a run directory, what it already holds, and whether this run may continue it.

A result is sacred: two processes never write one run directory, a checkpoint or a finished
``metrics.json`` is never continued or relabelled by a different configuration, and a rejected run
leaves nothing of an earlier one changed.

- **Ownership.** :class:`RunDir` takes an exclusive ``flock`` on ``<run_dir>/.lock`` for as long as
  the run lives. The kernel drops it when the process dies, so a run killed with SIGKILL leaves no
  stale lock: re-running resumes. A second process on a live dir stops with one line.
- **Fingerprint.** :func:`fingerprint` is a hash of every config value that changes what is learned
  (everything but :data:`NOT_RESULT_AFFECTING`). Checkpoints and ``metrics.json`` carry it with the
  values themselves, so a mismatch names the keys that differ.
- **State.** :meth:`RunDir.inspect` reads the dir without writing: ``done`` (a finished run of this
  configuration: nothing to do), ``resume`` (the newest checkpoint, loaded once) or ``fresh``.
  :meth:`RunDir.claim` is the first write: it removes what an earlier, result-less attempt left
  (TensorBoard events, ``error.json``) and records the job's config files.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench.errors import MtlbenchError
from mtlbench.files import atomic_write_bytes

LOCK_NAME = ".lock"

#: Config keys that do not change what is learned; everything else is in the fingerprint. (Like
#: the thread count, torch's optimizer implementation changes float rounding at most.)
NOT_RESULT_AFFECTING = (
    "trainer.device", "trainer.num_threads", "trainer.progress", "trainer.report_metric",
    "trainer.log_every", "trainer.grad_log_every", "trainer.checkpoint_every",
    "trainer.keep_checkpoints", "trainer.resume", "trainer.retain_cpu_memory",
    "trainer.eval_batch_size", "data.root", "data.mnist_dir", "data.fashion_dir",
    "data.download", "data.cache", "data.cache_dir", "optimizer.foreach", "optimizer.fused",
)


class RunDirBusy(MtlbenchError):
    """Another live process owns the run directory."""


class ConfigMismatch(MtlbenchError):
    """The run directory holds a checkpoint or result of another configuration."""


def flat_config(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaves of a (resolved, plain) config as ``{"a.b": value}``; lists stay values, and an
    empty mapping is the value None (``trainer.select_reference`` unset: as it was recorded when
    its default was null, so the fingerprints of earlier runs still match)."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not value:
            flat[name] = None
        elif isinstance(value, Mapping):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def result_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config values that change what is learned (JSON-safe: ±inf as strings)."""
    return {k: _json_safe(v) for k, v in sorted(flat_config(cfg).items())
            if not k.startswith(NOT_RESULT_AFFECTING)}


def fingerprint(values: Mapping[str, Any]) -> str:
    """A short hash of :func:`result_config`'s values."""
    text = json.dumps(dict(values), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> str:
    """``key (was A, now B)`` for each differing key, the first ``limit`` of them."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
    parts = [f"`{k}` (was {old.get(k, '<unset>')}, now {new.get(k, '<unset>')})"
             for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(parts) + more


@dataclass
class Prior:
    """What :meth:`RunDir.inspect` found: ``state`` is ``fresh``, ``resume`` or ``done``."""

    state: str
    metrics: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_path: Path | None = None
    stale: list[Path] = field(default_factory=list)

    def stale_summary(self) -> str:
        """What :meth:`RunDir.claim` removes, in words (``TensorBoard events, error.json``)."""
        kinds = {"TensorBoard events" if p.name.startswith("events.") else
                 "checkpoints" if p.suffix == ".pt" else p.name for p in self.stale}
        return ", ".join(sorted(kinds))


#: Run dirs this process has claimed (their failures are this process's to record).
_CLAIMED: set[Path] = set()


class RunDir:
    """Exclusive ownership of ``path`` for one run (a context manager)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self._fd: int | None = None

    def __enter__(self) -> RunDir:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirBusy` naming the holder's pid."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirBusy(
                f"Run dir {self.path} is in use by another mtlbench process (pid {holder}); "
                "wait for it to finish, or choose another hydra.run.dir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def inspect(self, values: Mapping[str, Any], *, fresh: bool,
                load_checkpoint: Any) -> Prior:
        """Read the dir (no writes). Raises :class:`ConfigMismatch` for a result or checkpoint of
        another configuration; ``fresh`` (``trainer.resume=fresh``) discards both instead.
        ``load_checkpoint(path) -> state dict`` reads the newest checkpoint."""
        from mtlbench import checkpoint

        stale = [p for p in self.path.glob("events.out.tfevents.*")] + [
            p for p in (self.path / "error.json", self.path / "metrics.json") if p.exists()]
        found = checkpoint.list_checkpoints(self.path)
        if fresh:
            return Prior("fresh", stale=stale + [p for _, p in found])
        metrics = read_metrics(self.path)
        if metrics is not None:
            self._check(metrics.get("config"), values, "a finished run (metrics.json)")
            return Prior("done", metrics=metrics)
        if not found:
            return Prior("fresh", stale=stale)
        step, path = found[-1]
        state = load_checkpoint(path)
        self._check(state.get("config"), values, f"a checkpoint at step {step} ({path.name})")
        errors = [p for p in stale if p.name == "error.json"]
        return Prior("resume", checkpoint=state, checkpoint_path=path, stale=errors)

    def _check(self, old: Mapping[str, Any] | None, new: Mapping[str, Any], what: str) -> None:
        if old is None:
            raise ConfigMismatch(
                f"Run dir {self.path} holds {what} without a config fingerprint (written by an "
                "older mtlbench), so it cannot be matched to this config; choose another "
                "hydra.run.dir, or trainer.resume=fresh to discard it."
            )
        if fingerprint(old) != fingerprint(new):
            ways = ("keep it and choose another hydra.run.dir for this configuration "
                    "(trainer.resume=fresh replaces it)" if what.startswith("a finished") else
                    "re-run with its configuration to resume it, or choose another hydra.run.dir "
                    "(trainer.resume=fresh discards its checkpoints)")
            raise ConfigMismatch(f"Run dir {self.path} holds {what} of another configuration: "
                                 f"{differences(old, new)}. To go on: {ways}.")

    def claim(self, prior: Prior, config_files: Mapping[str, str] | None = None) -> None:
        """The run's first write: drop what ``prior`` marked stale, record its config files
        (``.hydra/<name>`` ← text)."""
        for path in prior.stale:
            path.unlink(missing_ok=True)
        for name, text in (config_files or {}).items():
            atomic_write_bytes(self.path / ".hydra" / name, text.encode())
        _CLAIMED.add(self.path)


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` of ``run_dir`` (None if absent); unreadable → :class:`ConfigMismatch`."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigMismatch(
            f"{path} cannot be read ({type(exc).__name__}); move it away or choose another "
            "hydra.run.dir."
        ) from None


def holds_result(run_dir: Path) -> bool:
    """Whether ``run_dir`` has a finished result or a checkpoint."""
    from mtlbench import checkpoint

    return (Path(run_dir) / "metrics.json").exists() or bool(checkpoint.list_checkpoints(run_dir))


def is_busy(run_dir: Path) -> bool:
    """Whether another live process holds ``run_dir``'s lock (a non-blocking probe)."""
    lock = Path(run_dir) / LOCK_NAME
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def may_record_failure(run_dir: Path) -> bool:
    """Whether a failure of this process may be written into ``run_dir`` (``error.json``): it
    claimed the dir, or the dir holds no result and no live run of another process."""
    path = Path(run_dir).resolve()
    if path in _CLAIMED:
        return True
    return path.is_dir() and not holds_result(path) and not is_busy(path)


def new_dir(base: str) -> str:
    """``base``, created now; ``base_2``, ``base_3``, … if it exists (mkdir is atomic, so two
    processes never get the same one). The ``mtlbench.new_dir`` resolver of the default
    ``hydra.run.dir`` (not of the sweep dir: Hydra re-composes every job's config, which would
    create it again); memoized per process."""
    if base in _NEW_DIRS:
        return _NEW_DIRS[base]
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = base if i == 1 else f"{base}_{i}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        _NEW_DIRS[base] = candidate
        return candidate
    raise MtlbenchError(f"Could not create a new run dir next to {base}.")


_NEW_DIRS: dict[str, str] = {}
