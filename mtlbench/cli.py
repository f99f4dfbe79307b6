"""``mtlbench <subcommand>``: ``train`` (the Hydra app) and ``report``. Kept thin on purpose.

Imports are deferred to where they are used, so ``mtlbench --help``, ``mtlbench train --help`` and
``mtlbench report`` answer without importing torch.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtlbench.errors import ConfigError, MtlbenchError

log = logging.getLogger("mtlbench")

USAGE = """usage: mtlbench <command> [args]

commands:
  train    train one configuration, or a sweep with -m (Hydra app; `mtlbench train --help`)
  report   compare finished runs: `mtlbench report DIR [DIR ...]` (`mtlbench report --help`)
"""

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _train(cfg: Any) -> float:
    """The Hydra task function: one run in Hydra's output dir. Returns ``trainer.report_metric``.

    A single run reports a user error as one line (exit 1) and lets a bug show its traceback. In a
    multirun no job's failure escapes: it is written to the job's ``error.json`` (with the
    traceback of an unexpected one) and logged in one line, the job returns nan, and the sweep
    goes on; ``main`` exits non-zero after the summary.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mtlbench import ledger
    from mtlbench.callbacks import JobStatusReport, optimizing_sweeper
    from mtlbench.train import Interrupted, override_text, run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    strategy = hc.runtime.choices.get("strategy") or "custom"
    single = hc.mode == RunMode.RUN
    config_files = job_config_files(cfg, hc)

    def note(state: str, error: str | None = None) -> None:
        """This job's state in the sweep's ledger (a multirun's jobs only)."""
        if not single:
            ledger.record(hc.sweep.dir, hc.job.num, run_dir, state, error)

    note("started")
    try:
        if not single and cfg.trainer.report_metric is None and optimizing_sweeper({"hydra": hc}):
            raise ConfigError("The sweeper optimizes `trainer.report_metric`, which is not set; "
                              "set it, e.g. trainer.report_metric=val/accuracy/<task>.")
        metrics = run(cfg, run_dir, strategy, interactive=single and sys.stderr.isatty(),
                      config_files=config_files)
    except Interrupted as exc:
        message = str(exc) if single else (
            f"{exc.what} To resume, run the same sweep command with "
            f"{override_text('hydra.sweep.dir', hc.sweep.dir)}: finished jobs are skipped and "
            "this one resumes.")
        log_to_file(logging.WARNING, message)
        sys.stderr.write(f"mtlbench: {message}\n")
        note("interrupted", exc.what)
        sys.exit(EXIT_INTERRUPTED)
    except MtlbenchError as exc:
        JobStatusReport.failed += 1
        record_failure(run_dir, exc, config_files)
        if single:
            sys.stderr.write(f"mtlbench: error: {exc}\n")
            sys.exit(1)
        log.error("Job %s failed: %s", run_dir.name, exc)
        note("failed", f"{type(exc).__name__}: {first_line(exc)}")
        return math.nan
    except Exception as exc:
        record_failure(run_dir, exc, config_files, with_traceback=True)
        if single:  # (JobStatusReport.on_job_end counts a job whose exception passes through)
            raise
        JobStatusReport.failed += 1
        log.error("Job %s failed with an unexpected %s: %s (traceback in %s)", run_dir.name,
                  type(exc).__name__, first_line(exc), run_dir / "error.json")
        note("failed", f"{type(exc).__name__}: {first_line(exc)}")
        return math.nan
    note("finished")
    JobStatusReport.finished += 1
    return metric_value(metrics, cfg.trainer.report_metric)


def job_config_files(cfg: Any, hc: Any) -> dict[str, str]:
    """``.hydra/`` files as Hydra writes them (config.yaml, hydra.yaml, overrides.yaml), written by
    the run itself once it is accepted (``hydra.output_subdir`` is null), so a rejected re-run
    never replaces those of an earlier run."""
    from omegaconf import OmegaConf

    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": hc}),
        "overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task)),
    }


def record_failure(run_dir: Path, exc: BaseException, config_files: dict[str, str],
                   with_traceback: bool = False) -> None:
    """Write ``error.json`` and this attempt's ``.hydra/`` (so the two describe one attempt: an
    earlier failed attempt's config is replaced with its error) and put the error into
    ``cli.log``, unless the dir holds a result or a checkpoint or is in use by another process
    (:func:`mtlbench.rundir.may_record_failure`)."""
    from mtlbench.files import atomic_write_bytes, write_error
    from mtlbench.rundir import may_record_failure

    log_to_file(logging.ERROR, f"{type(exc).__name__}: {exc}", exc if with_traceback else None)
    if may_record_failure(run_dir):
        tb = "".join(traceback.format_exception(exc)) if with_traceback else None
        write_error(run_dir, exc, tb)
        for name, text in config_files.items():
            atomic_write_bytes(run_dir / ".hydra" / name, text.encode())


def log_to_file(level: int, message: str, exc: BaseException | None = None) -> None:
    """Put ``message`` into the job's log file (``cli.log``) only; the console gets its one line
    from the caller."""
    record = logging.LogRecord("mtlbench", level, __file__, 0, message, None,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def metric_value(metrics: dict, name: str | None) -> float:
    """``val/<metric>/<task>`` or ``test/<metric>/<task>`` from a metrics dict (nan if unset,
    or not recorded: a metrics.json of an older mtlbench may have an empty ``val``)."""
    if not name:
        return math.nan
    split, metric, task = name.split("/")
    source = metrics.get("val" if split == "val" else "tasks") or {}
    value = (source.get(task) or {}).get(metric)
    return math.nan if value is None else float(value)


def one_line(exc: BaseException) -> str:
    """A one-line message for a configuration error raised while Hydra composes the config."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, MissingConfigException) and exc.options is not None:
        group, _, name = str(exc.missing_cfg_file or "").rpartition("/")
        hint = ""
        if group.startswith(("hydra/launcher", "hydra/sweeper")):
            hint = " (launcher and sweeper plugins: pip install 'mtlbench[sweeps]')"
        return (f"`{group or 'config'}={name}` is not a known option; accepted: "
                f"{', '.join(sorted(exc.options)) or '(none installed)'}{hint}.")
    if isinstance(exc, OSError) and exc.filename:
        return (f"cannot write `{exc.filename}` ({exc.strerror}); set hydra.run.dir (or "
                "hydra.sweep.dir) to a writable folder.")
    head = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        first = str(cause.msg or cause).splitlines()[0].strip()
        key = f" (key `{cause.full_key}`)" if cause.full_key else ""
        if str(cause.full_key or "").startswith("trainer.select_reference.") and (
                "not in struct" in first):
            key += f"; add each task's value with +{cause.full_key}=<value>"
        head = str(exc).splitlines()[0].strip().rstrip(".")
        return first + key if head == first else f"{head}: {first}{key}"
    return re.sub(r"\s+", " ", head)


def _report_errors_on_one_line(func: Callable[[], Any]) -> Any:
    """Replacement for Hydra's ``run_and_report``: user errors become one line on stderr + exit 1.

    User errors: ours, OmegaConf's and Hydra's, and an output location that cannot be written.
    A sweep whose every job failed ends the same way (the Optuna sweeper raises when no trial
    completed). Anything else (a bug) keeps Hydra's own reporting, with its trimmed traceback.
    """
    import hydra
    from omegaconf.errors import OmegaConfBaseException

    from mtlbench.callbacks import JobStatusReport, summarize

    try:
        return func()
    except (MtlbenchError, OmegaConfBaseException, hydra.errors.HydraException, OSError) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        cause = exc.__cause__ if isinstance(exc.__cause__, (MtlbenchError, OSError)) else exc
        sys.stderr.write(f"mtlbench: error: {one_line(cause)}\n")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - delegate to Hydra's reporting
        sweep_dir = JobStatusReport.sweep_dir
        if (JobStatusReport.multirun and sweep_dir is not None
                and os.environ.get("HYDRA_FULL_ERROR") != "1"):
            finished, failed, unfinished = summarize(sweep_dir, "Multirun stopped")
            if failed and not finished and not unfinished:
                sys.stderr.write(f"mtlbench: error: all {failed} jobs of the sweep failed; each "
                                 "job's error.json says why.\n")
            else:
                sys.stderr.write(
                    f"mtlbench: error: the sweep stopped ({type(exc).__name__}: "
                    f"{first_line(exc)[:300]}) with {finished} finished, {failed} failed and "
                    f"{unfinished} unfinished jobs; re-running the same command skips the "
                    "finished ones and resumes the rest (HYDRA_FULL_ERROR=1 shows the "
                    "traceback).\n")
            sys.exit(1)
        error = exc
        return _original_run_and_report(lambda: (_ for _ in ()).throw(error))


_original_run_and_report: Callable[..., Any] = lambda func: func()  # noqa: E731 - set in main


#: Config groups that take one option name (a list would merge several options into one
#: config, which then runs under none of their names).
SINGLE_OPTION_GROUPS = ("strategy", "data", "model", "optimizer", "scheduler")
#: Every config group of ``conf/`` a command line may choose an option of.
GROUPS = (*SINGLE_OPTION_GROUPS, "experiment", "hydra/launcher", "hydra/sweeper")
#: Overrides whose value is a folder: empty would mean the current directory.
FOLDER_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def check_overrides(overrides: list[str]) -> None:
    """One-line :class:`ConfigError` for command lines Hydra would take wrongly or answer with a
    traceback: a number beyond float64 (:func:`check_number_literals`), a config group set to
    null or (for :data:`SINGLE_OPTION_GROUPS`) to a list, an empty run or sweep dir."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    check_number_literals(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(
            [arg for arg in overrides if not arg.startswith("-")])
    except HydraException:
        return  # Hydra reports a malformed override itself, in one line
    for override in parsed:
        key = override.key_or_group
        try:
            values = (list(override.sweep_iterator()) if override.is_sweep_override()
                      else [override.value()])
        except HydraException:  # an interval sweep (optuna): no values to list
            continue
        if key in GROUPS and override.package is None and any(v is None for v in values):
            raise ConfigError(f"`{key}` takes an option name, not null; "
                              f"`mtlbench train --help` lists them.")
        if key in SINGLE_OPTION_GROUPS and any(isinstance(v, list) for v in values):
            raise ConfigError(f"`{key}` takes one option, not a list (a list merges the options "
                              f"into one config); to run each: mtlbench train -m {key}=a,b.")
        if key in FOLDER_KEYS and any(v is None or str(v).strip() == "" for v in values):
            raise ConfigError(f"`{key}` is empty; give a folder (empty would be the current "
                              "directory).")


def check_number_literals(overrides: list[str]) -> None:
    """Reject an override whose number is beyond float64 (``1e400`` would silently become inf,
    ``1e-400`` zero; also as ``1_0e400``, in a list, a dict or ``choice(...)``); ``inf``/``-inf``
    must be written as such."""
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if not sep or key.startswith("-"):
            continue
        for item in re.split(r"[,\[\](){}:\s]", value):
            text = item.strip()
            if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", text.replace("_", "")):
                continue
            number = float(text.replace("_", ""))
            if math.isinf(number) or (number == 0 and re.search(r"[1-9]", text.lower()
                                                                  .split("e")[0])):
                what = "inf" if math.isinf(number) else "0"
                raise ConfigError(
                    f"`{key.lstrip('+~')}={text}` is beyond float64's range and would silently "
                    f"become {what}; write inf / -inf explicitly, or a number within ±1.8e308 "
                    "(smallest 5e-324)."
                )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "report":
        from mtlbench.report import main as report_main

        return report_main(rest)
    print(f"mtlbench: unknown command `{command}`; accepted: train, report.", file=sys.stderr)
    return 2


def train_main(args: list[str]) -> int:
    """``mtlbench train``: our own fast ``--help``; everything else goes to the Hydra app."""
    if any(a in ("-h", "--help") for a in args):
        from mtlbench.help import train_help

        print(train_help(), end="")
        return 0
    try:
        check_overrides(args)
    except ConfigError as exc:
        sys.stderr.write(f"mtlbench: error: {exc}\n")
        return 1
    from mtlbench.threads import prepare_process_env

    prepare_process_env()
    import hydra
    import hydra._internal.hydra as hydra_internal
    import hydra._internal.utils as hydra_utils

    from mtlbench.callbacks import JobStatusReport
    from mtlbench.config import register_configs

    global _original_run_and_report
    register_configs()
    if hydra_utils.run_and_report is not _report_errors_on_one_line:
        _original_run_and_report = hydra_utils.run_and_report
    hydra_utils.run_and_report = _report_errors_on_one_line
    hydra_internal.run_and_report = _report_errors_on_one_line
    app = hydra.main(version_base="1.3", config_path="pkg://mtlbench.conf",
                     config_name="config")(_train)
    JobStatusReport.reset()
    argv, sys.argv = sys.argv, ["mtlbench train", *args]
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("mtlbench: interrupted (Ctrl-C) without writing a new checkpoint; "
                         "checkpoints already in the run dir are kept.\n")
        return EXIT_INTERRUPTED
    finally:
        sys.argv = argv
    return 1 if JobStatusReport.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
