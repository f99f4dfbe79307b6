"""Hydra callback: failed jobs are counted and summarized at the multirun's end.

In a multirun ``cli._train`` catches every failure of a job, writes its ``error.json`` (with the
traceback of an unexpected exception) and returns nan, so the sweep goes on and Hydra never
re-raises. :meth:`JobStatusReport.on_job_end` counts the jobs (in this process: basic and optuna
sweepers), :meth:`~JobStatusReport.on_multirun_end` counts them again from disk (parallel launchers
run jobs elsewhere) and logs the summary; ``mtlbench train -m`` then exits 1 if any job failed.
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
    #: whether the jobs run as a multirun (``-m``): set by ``cli._train``
    multirun = False

    @classmethod
    def reset(cls) -> None:
        cls.finished = cls.failed = 0
        cls.multirun = False

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

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mtlbench.report import find_job_dirs, read_run

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        runs = [read_run(p) for p in find_job_dirs(sweep_dir)]
        bad = [r for r in runs if r.status != "finished"]
        failed = sum(r.status == "failed" for r in bad)
        JobStatusReport.finished, JobStatusReport.failed = len(runs) - len(bad), len(bad)
        summary = (f"Multirun done in {sweep_dir}: {len(runs) - len(bad)} finished, "
                   f"{failed} failed, {len(bad) - failed} unfinished.")
        if not bad:
            log.info("%s Compare: mtlbench report %s", summary, sweep_dir)
            return
        log.warning("%s", summary)
        for run in bad:
            detail = f": {run.error}" if run.error else ""
            log.warning("  %s %s%s", run.status, run.path.name, detail)
