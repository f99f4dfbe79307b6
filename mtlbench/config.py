"""Structured-config schema (dataclasses in Hydra's ConfigStore) and value checks.

Types and unknown keys are checked by OmegaConf against these dataclasses when Hydra composes the
config; ranges (``lr > 0``, ``max_steps > 0``, …) by :func:`validate`. Strategy hyperparameters are
checked by each strategy's constructor. Every failure is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, OmegaConf

from mtlbench.errors import ConfigError

#: Schemas of the group options: (group, name) → dataclass (dotted path, imported when the configs
#: are registered, so that ``mtlbench train --help`` needs no torch). A YAML option extends one
#: with ``defaults: [/schema/<group>/<name>@_here_]``.
SCHEMAS: dict[tuple[str, str], str] = {
    ("data", "synthetic"): "mtlbench.data.synthetic.SyntheticDataConfig",
    ("data", "gradnorm_toy"): "mtlbench.data.gradnorm_toy.GradNormToyDataConfig",
    ("model", "mlp"): "mtlbench.models.mlp.MLPConfig",
    ("data", "multimnist"): "mtlbench.data.pairs.MultiMNISTConfig",
    ("data", "multifashion"): "mtlbench.data.pairs.MultiFashionConfig",
    ("data", "multifashion_mnist"): "mtlbench.data.pairs.MultiFashionMNISTConfig",
    ("model", "lenet"): "mtlbench.models.lenet.LeNetConfig",
    ("model", "resnet18"): "mtlbench.models.resnet.ResNet18Config",
}


@dataclass
class AdamConfig:
    """``optimizer=adam``: ``torch.optim.Adam``. ``foreach`` / ``fused``: torch's implementation
    choice (null: torch's default, a Python loop over the parameters on the CPU); the same update,
    up to float rounding. ``fused=true`` runs the whole step in one kernel: on the CPU 3x faster
    than the loop (0.06 vs 0.16 ms for an MLP 32-128-128 with two heads; ``README.md``)."""

    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    foreach: bool | None = None
    fused: bool | None = None


@dataclass
class SGDConfig:
    """``optimizer=sgd``: ``torch.optim.SGD``; ``foreach`` / ``fused`` as :class:`AdamConfig`."""

    _target_: str = "torch.optim.SGD"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    foreach: bool | None = None
    fused: bool | None = None


@dataclass
class TrainerConfig:
    """``trainer.*``: the loop's knobs (length, batches, device, selection, logging, checkpoints).

    The run's length is ``max_steps`` or ``epochs`` (× ``len(train) // batch_size`` steps): exactly
    one is set. ``eval_every``: steps between validations, or ``epoch``. ``select``: ``last`` or
    ``best_val`` (``mtlbench.selection``). ``gradient_engine`` (``auto|loop|batched``) and
    ``linear_gramian`` (``auto|direct|kernel``): how per-task gradients over the shared
    parameters are computed (``mtlbench.gradients.GradientEngine``; exact either way).
    """

    max_steps: Optional[int] = 300  # noqa: UP045
    epochs: Optional[int] = None  # noqa: UP045
    eval_every: Any = 100
    batch_size: int = 128
    eval_batch_size: int = 2048
    device: str = "auto"
    log_every: int = 10
    grad_log_every: int = 50
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: str = "auto"
    deterministic: bool = False
    progress: str = "auto"
    on_nonfinite: str = "error"
    max_skip_fraction: float = 0.1
    num_threads: int = 0
    retain_cpu_memory: bool = True
    report_metric: Optional[str] = None  # noqa: UP045
    precision: str = "32"
    gradient_engine: str = "auto"
    linear_gramian: str = "auto"
    select: str = "last"
    select_metric: str = "mean_accuracy"
    # task → value (``delta_m`` selection); a dict, not None, so that the command line can set
    # ``trainer.select_reference.<task>=v`` (OmegaConf cannot add a key under a None node)
    select_reference: Dict[str, float] = field(default_factory=dict)  # noqa: UP006


@dataclass
class Config:
    """The root config: one option per group plus ``trainer`` and ``seed``."""

    defaults: List[Any] = field(default_factory=list)  # noqa: UP006
    data: Any = MISSING
    model: Any = MISSING
    strategy: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0


def register_configs() -> None:
    """Store the root schema and every group schema in Hydra's ConfigStore, and register the
    ``mtlbench.new_dir`` resolver of the default run dirs (idempotent)."""
    from mtlbench.rundir import new_dir

    if not OmegaConf.has_resolver("mtlbench.new_dir"):
        OmegaConf.register_new_resolver("mtlbench.new_dir", new_dir, use_cache=True)
    if not OmegaConf.has_resolver("mtlbench.parallel_jobs"):
        from mtlbench.gpus import parallel_jobs

        OmegaConf.register_new_resolver("mtlbench.parallel_jobs", parallel_jobs)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for (group, name), schema in SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=name, node=get_object(schema))
    cs.store(group="schema/optimizer", name="adam", node=AdamConfig)
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)


MAX_SEED = 2**63 - 1
#: ``trainer.num_threads`` at most this many per CPU (OpenMP fails, or the process crashes, when
#: asked for tens of thousands of threads).
MAX_THREADS_PER_CPU = 4
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"`{key}` must be an integer >= {minimum}. Found `{key} = {value}`.")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"`{key}` must be one of {', '.join(choices)}. Found `{key} = {value}`.")


def check_known_keys(cfg: DictConfig) -> None:
    """A key that nothing reads (a typo added with ``+``/``++``, which Hydra accepts: ``+trainer.
    max_step=3``) is a :class:`ConfigError`: at the top level, in ``trainer`` and in a scheduler
    without ``_target_``. (The strategy, optimizer, model and data builders reject the keywords
    they do not take: :func:`mtlbench.instantiate.instantiate_group`; data tasks: their
    dataset's ``task_spec``.)"""
    known = {
        "": [f.name for f in fields(Config) if f.name != "defaults"],
        "trainer.": [f.name for f in fields(TrainerConfig)],
        "scheduler.": (["_target_", "interval"] if cfg.get("scheduler") is not None
                       and cfg.scheduler.get("_target_") is None else None),
    }
    for prefix, accepted in known.items():
        if accepted is None:
            continue
        node = cfg if not prefix else cfg.get(prefix.rstrip("."))
        unknown = [str(k) for k in (node or {}) if str(k) not in accepted]
        if unknown:
            raise ConfigError(f"`{prefix}{unknown[0]}` is not a setting mtlbench reads; "
                              f"accepted{' under ' + prefix.rstrip('.') if prefix else ''}: "
                              f"{', '.join(accepted)}.")


def validate(cfg: DictConfig) -> None:
    """Range checks that types alone cannot express; raises a one-line :class:`ConfigError`."""
    check_known_keys(cfg)
    t = cfg.trainer
    if (t.max_steps is None) == (t.epochs is None):
        both = "both are set" if t.epochs is not None else "neither is set"
        raise ConfigError(
            "Set exactly one of `trainer.max_steps` and `trainer.epochs` (" + both + ": "
            f"`trainer.max_steps = {t.max_steps}`, `trainer.epochs = {t.epochs}`); e.g. "
            "trainer.epochs=30 trainer.max_steps=null."
        )
    for key in ("max_steps", "epochs"):
        if t[key] is not None:
            _positive_int(f"trainer.{key}", t[key])
    every = t.eval_every
    if every != "epoch" and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ConfigError("`trainer.eval_every` must be an integer >= 1 or epoch. "
                          f"Found `trainer.eval_every = {every}`.")
    for key in ("batch_size", "eval_batch_size", "log_every", "grad_log_every",
                "keep_checkpoints"):
        _positive_int(f"trainer.{key}", t[key])
    for key in ("checkpoint_every", "num_threads"):
        _positive_int(f"trainer.{key}", t[key], minimum=0)
    most = MAX_THREADS_PER_CPU * (os.cpu_count() or 1)
    if t.num_threads > most:
        raise ConfigError(f"`trainer.num_threads` must be 0 (one per core) or 1 … {most} "
                          f"({MAX_THREADS_PER_CPU} per CPU of this machine). "
                          f"Found `trainer.num_threads = {t.num_threads}`.")
    if not DEVICE_PATTERN.match(str(t.device)):
        raise ConfigError(
            "`trainer.device` must be auto, cpu, cuda, cuda:N or mps. "
            f"Found `trainer.device = {t.device}`."
        )
    _choice("trainer.progress", t.progress, ("auto", "on", "off"))
    _choice("trainer.resume", t.resume, ("auto", "fresh"))
    _choice("trainer.on_nonfinite", t.on_nonfinite, ("error", "skip_step"))
    _choice("trainer.gradient_engine", t.gradient_engine, ("auto", "loop", "batched"))
    _choice("trainer.linear_gramian", t.linear_gramian, ("auto", "direct", "kernel"))
    lr = cfg.optimizer.get("lr")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(
            f"`optimizer.lr` must be a finite number > 0. Found `optimizer.lr = {lr}`."
        )
    if cfg.optimizer.get("foreach") and cfg.optimizer.get("fused"):
        raise ConfigError("`optimizer.foreach` and `optimizer.fused` are both true; torch runs one "
                          "implementation: set the other to false or null.")
    if not (0 <= t.max_skip_fraction < 1):
        raise ConfigError("`trainer.max_skip_fraction` must be in [0, 1). "
                          f"Found `trainer.max_skip_fraction = {t.max_skip_fraction}`.")
    if not isinstance(cfg.seed, int) or not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"`seed` must be an integer in [0, {MAX_SEED}] (2**63 - 1). "
                          f"Found `seed = {cfg.seed}`.")
