"""``mtlbench <subcommand>``: ``train`` (the Hydra app) and ``report``. Kept thin on purpose."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import hydra._internal.hydra as _hydra_internal
import hydra._internal.utils as _hydra_utils
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mtlbench.config import register_configs
from mtlbench.errors import MtlbenchError
from mtlbench.files import write_error

log = logging.getLogger("mtlbench")

USAGE = """usage: mtlbench <command> [args]

commands:
  train    train one configuration, or a sweep with -m (Hydra app; `mtlbench train --help`)
  report   compare finished runs: `mtlbench report DIR [DIR ...]` (`mtlbench report --help`)
"""


def _train(cfg: DictConfig) -> float:
    """The Hydra task function: one run in Hydra's output dir. Returns ``trainer.report_metric``."""
    from mtlbench.train import run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    strategy = hc.runtime.choices.get("strategy") or "custom"
    single = hc.mode == RunMode.RUN
    try:
        metrics = run(cfg, run_dir, strategy, interactive=single and sys.stderr.isatty())
    except MtlbenchError as exc:
        write_error(run_dir, exc)
        if single:
            sys.stderr.write(f"mtlbench: error: {exc}\n")
            sys.exit(1)
        log.error("%s", exc)
        return math.nan
    return metric_value(metrics, cfg.trainer.report_metric)


def metric_value(metrics: dict, name: str | None) -> float:
    """``val/<metric>/<task>`` or ``test/<metric>/<task>`` from a metrics dict (nan if unset)."""
    if not name:
        return math.nan
    split, metric, task = name.split("/")
    source = metrics["val"] if split == "val" else metrics["tasks"]
    return float(source[task][metric])


_train_app = hydra.main(version_base="1.3", config_path="pkg://mtlbench.conf",
                        config_name="config")(_train)


def one_line(exc: BaseException) -> str:
    """A one-line message for a configuration error raised while Hydra composes the config."""
    if isinstance(exc, MissingConfigException) and exc.options:
        group, _, name = str(exc.missing_cfg_file or "").rpartition("/")
        return (f"`{group or 'config'}={name}` is not a known option; accepted: "
                f"{', '.join(sorted(exc.options))}.")
    head = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        first = str(cause.msg or cause).splitlines()[0].strip()
        key = f" (key `{cause.full_key}`)" if cause.full_key else ""
        head = str(exc).splitlines()[0].strip().rstrip(".")
        return first + key if head == first else f"{head}: {first}{key}"
    return re.sub(r"\s+", " ", head)


def _report_errors_on_one_line(func: Callable[[], Any]) -> Any:
    """Replacement for Hydra's ``run_and_report``: user errors become one line on stderr + exit 1.

    Anything else (a bug) keeps Hydra's own reporting, with its trimmed traceback.
    """
    try:
        return func()
    except (MtlbenchError, OmegaConfBaseException, hydra.errors.HydraException) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        cause = exc.__cause__ if isinstance(exc.__cause__, MtlbenchError) else exc
        sys.stderr.write(f"mtlbench: error: {one_line(cause)}\n")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - delegate to Hydra's reporting
        error = exc
        return _original_run_and_report(lambda: (_ for _ in ()).throw(error))


_original_run_and_report = _hydra_utils.run_and_report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        register_configs()
        _hydra_utils.run_and_report = _report_errors_on_one_line
        _hydra_internal.run_and_report = _report_errors_on_one_line
        sys.argv = ["mtlbench train", *rest]
        _train_app()
        return 0
    if command == "report":
        from mtlbench.report import main as report_main

        return report_main(rest)
    print(f"mtlbench: unknown command `{command}`; accepted: train, report.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
