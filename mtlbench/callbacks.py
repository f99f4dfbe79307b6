"""Hydra callback: failed jobs are counted and summarized at the multirun's end.

In a multirun ``cli._train`` catches every failure of a job, writes its ``error.json`` (with the
traceback of an unexpected exception) and returns nan, so the sweep goes on and Hydra never
re-raises. :meth:`JobStatusReport.on_multirun_start` gives the sweep its ledger
(:mod:`mtlbench.ledger`), where every job notes its start and end whatever process runs it;
:func:`summarize` (at the multirun's end, or when its launcher dies) counts this sweep's jobs from
it (from the job dirs on disk where no job kept one) and logs the summary; ``mtlbench train -m``
then exits 1 if any job failed or did not end.
With the optuna sweeper a nan result becomes a failed trial (told FAIL), so the study goes on (up
to ``max_failure_rate``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mtlbench.files import write_error

log = logging.getLogger("mtlbench")


class JobFailed(RuntimeError):
    """A job that returned nan after writing ``error.json`` (re-raised for optimizing sweepers)."""


def optimizing_sweeper(config: DictConfig | dict[str, Any]) -> bool:
    """Whether the sweeper optimizes the returned value (anything but Hydra's basic sweeper);
    ``config``: the job's config, or ``{"hydra": HydraConfig.get()}``."""
    target = str(config["hydra"].sweeper.get("_target_", ""))
    return bool(target) and not target.endswith("BasicSweeper")


def mark_nan_failed(config: DictConfig, job_return: JobReturn) -> None:
    """Turn a nan result (``cli._train`` after a user error) into a failed job.

    Optuna 2.10 refuses a nan objective with an exception inside ``study.tell`` that the Hydra
    optuna sweeper (1.3) does not survive; a failed job instead is told as a FAIL trial and the
    study goes on. The basic sweeper keeps nan, so a failed run does not abort a grid sweep.
    """
    value = job_return._return_value
    if not (isinstance(value, float) and math.isnan(value)):
        return
    error_file = Path(config.hydra.runtime.output_dir) / "error.json"
    try:
        error = json.loads(error_file.read_text())
        message = f"{error.get('type', 'Error')}: {error.get('error', '')}"
    except (OSError, ValueError, AttributeError):
        message = "the task function returned nan"
    job_return.status = JobStatus.FAILED
    job_return.return_value = JobFailed(message)


class JobStatusReport(Callback):
    """Logs a finished / failed / unfinished summary of the multirun.

    ``finished`` / ``failed``: class-level job counts (``cli._train`` counts the jobs it runs; the
    summary recounts from disk), read by ``mtlbench.cli`` for the exit status.
    """

    finished = 0
    failed = 0
    #: whether this process runs a multirun (``-m``; set at its start)
    multirun = False
    #: the multirun's sweep dir (set at its start)
    sweep_dir: Path | None = None

    @classmethod
    def reset(cls) -> None:
        cls.finished = cls.failed = 0
        cls.multirun, cls.sweep_dir = False, None

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and optimizing_sweeper(config):
            mark_nan_failed(config, job_return)
        if job_return.status != JobStatus.FAILED:
            return
        run_dir, error = Path(config.hydra.runtime.output_dir), job_return._return_value
        if isinstance(error, BaseException) and not isinstance(error, JobFailed):
            from mtlbench.rundir import may_record_failure

            JobStatusReport.failed += 1  # raised past cli._train (which counts its own)
            if may_record_failure(run_dir) and not (run_dir / "error.json").exists():
                write_error(run_dir, error)
        log.error("Job %s failed: %s: %s", run_dir.name, type(error).__name__, error)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mtlbench import ledger

        ledger.start()
        JobStatusReport.multirun, JobStatusReport.sweep_dir = True, Path(config.hydra.sweep.dir)
        ledger.keep_config(JobStatusReport.sweep_dir, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(Path(config.hydra.sweep.dir))


def summarize(sweep_dir: Path, done: str = "Multirun done") -> tuple[int, int, int]:
    """Log the sweep's finished / failed / unfinished jobs and set :class:`JobStatusReport`'s
    counts; returns them. From the sweep's ledger (:mod:`mtlbench.ledger`: this sweep's jobs
    only, refused ones as failed); without one, from the job dirs on disk."""
    from mtlbench import ledger

    found = ledger.entries(sweep_dir)
    if found is not None:
        jobs = [(Path(e["dir"]).name, e["state"], e.get("error")) for e in found]
    elif sweep_dir.is_dir():
        from mtlbench.report import find_job_dirs, read_run

        jobs = [(r.path.name, r.status, r.error)
                for r in (read_run(p) for p in find_job_dirs(sweep_dir))]
    else:
        return 0, 0, 0
    finished = sum(state == "finished" for _, state, _ in jobs)
    failed = sum(state == "failed" for _, state, _ in jobs)
    unfinished = len(jobs) - finished - failed
    JobStatusReport.finished, JobStatusReport.failed = finished, failed + unfinished
    summary = (f"{done} in {sweep_dir}: {finished} finished, {failed} failed, "
               f"{unfinished} unfinished.")
    if not failed + unfinished:
        log.info("%s Compare: mtlbench report %s", summary, sweep_dir)
    else:
        log.warning("%s", summary)
        for name, state, error in jobs:
            if state != "finished":
                state = "unfinished" if state in ("started", "interrupted") else state
                log.warning("  %s %s%s", state, name, f": {error}" if error else "")
    return finished, failed, unfinished
