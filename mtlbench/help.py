"""``mtlbench train --help``: the config groups, their options and the ``trainer.*`` keys.

Read from the packaged YAML files and the ``TrainerConfig`` schema, without composing a config or
importing torch, so it answers at once. Internal groups (``schema/*``, ``model/for_data``) are not
shown.
"""

from __future__ import annotations

import dataclasses
from importlib.resources import files

#: Groups users pick from (``hydra/*`` ones are Hydra's: launchers and sweepers).
GROUPS = ("data", "model", "strategy", "optimizer", "scheduler", "experiment", "hydra/launcher")

HEADER = """usage: mtlbench train [-m] [group=option ...] [key=value ...]

Train one configuration (or, with -m, a sweep over comma-separated values) and write metrics.json,
TensorBoard events and checkpoints into the run dir (default: outputs/<date>/<time>).

examples:
  mtlbench train strategy=gradnorm_ideal seed=3
  mtlbench train data=multifashion trainer.max_steps=200
  mtlbench train -m strategy=generalized_mean strategy.gamma=-1,0,1,2
  mtlbench train hydra.run.dir=runs/a trainer.checkpoint_every=100   # re-run to resume
"""

FOOTER = """
other keys: seed (integer, default 0), data.*, model.*, strategy.*, optimizer.* (see the option's
YAML, or print the composed config with `mtlbench train --cfg job [overrides]`).
Hydra's own flags (--cfg, --info, --multirun, ...): `mtlbench train --hydra-help`.
"""


def group_options(group: str) -> list[str]:
    """Option names of ``group`` (the YAML files in ``conf/<group>/``)."""
    folder = files("mtlbench.conf").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def trainer_keys() -> list[str]:
    """``trainer.<key>=<default>`` for every field of the trainer schema, with the defaults of the
    root config (``conf/config.yaml``) where it sets them."""
    import yaml

    from mtlbench.config import TrainerConfig

    root = yaml.safe_load(files("mtlbench.conf").joinpath("config.yaml").read_text())
    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING
                and f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainerConfig)}
    defaults.update(root.get("trainer") or {})
    return [f"trainer.{k}={'null' if v is None else v}" for k, v in defaults.items()]


def train_help() -> str:
    lines = [HEADER, "config groups (group=option):"]
    for group in GROUPS:
        options = group_options(group)
        if group == "hydra/launcher":
            options = ["basic (default)", *options, "submitit_local"]
        lines += wrap([f"{o}," for o in dict.fromkeys(options)], f"  {group + ':':<16}")
    lines += ["", "trainer keys (key=default):", *wrap(trainer_keys(), "  ")]
    return "\n".join(line.rstrip(",") for line in lines) + "\n" + FOOTER


def wrap(words: list[str], indent: str, width: int = 99) -> list[str]:
    """``words`` joined by spaces into lines of at most ``width`` characters after ``indent``."""
    lines, row = [], indent
    for word in words:
        if row.strip() and len(row) + len(word) + 1 > width:
            lines.append(row.rstrip())
            row = " " * len(indent)
        row += word + " "
    return [*lines, row.rstrip()]
