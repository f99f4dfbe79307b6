"""``mtlbench <subcommand>``: ``train`` (the Hydra app) and ``report``. Kept thin on purpose."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mtlbench.config import register_configs
from mtlbench.errors import MtlbenchError

log = logging.getLogger("mtlbench")

USAGE = """usage: mtlbench <command> [args]

commands:
  train    train one configuration, or a sweep with -m (Hydra app; `mtlbench train --help`)
  report   compare finished runs: `mtlbench report DIR [DIR ...]` (`mtlbench report --help`)
"""


def _train(cfg: DictConfig) -> float:
    """The Hydra task function: one run in Hydra's output dir. Returns ``trainer.report_metric``."""
    from mtlbench.train import run, write_json_atomic

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    strategy = hc.runtime.choices.get("strategy") or "custom"
    single = hc.mode == RunMode.RUN
    try:
        metrics = run(cfg, run_dir, strategy, interactive=single and sys.stderr.isatty())
    except MtlbenchError as exc:
        log.error("%s", exc)
        write_json_atomic(run_dir / "error.json", {"error": str(exc), "type": type(exc).__name__})
        if single:
            sys.exit(1)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        register_configs()
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
