"""The training loop, top to bottom: build → strategy setup → steps → evaluate → checkpoint →
metrics.json.

This is the only module that calls ``backward()`` and ``optimizer.step()``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from mtlbench import checkpoint, rundir, segments
from mtlbench.allocator import retain_freed_memory
from mtlbench.config import validate
from mtlbench.data import MultiTaskData, Split, build_data
from mtlbench.errors import ConfigError, MtlbenchError, TrainingDiverged
from mtlbench.files import write_json_atomic
from mtlbench.gpus import claim_gpu
from mtlbench.gradients import (
    HALF,
    Decision,
    GradientEngine,
    SeparableWeigh,
    TaskGradients,
    Weigh,
    may_take_kernel,
    scale_heads,
    shared_by_running_sum,
    split_forward,
    splits_at_last_shared,
    weighted_backward,
)
from mtlbench.instantiate import instantiate_group
from mtlbench.models.multitask import MultiTaskModel, build_model
from mtlbench.precision import Precision, build_precision
from mtlbench.progress import Progress
from mtlbench.schedulers import Schedule, build_scheduler
from mtlbench.selection import Criterion, build_criterion
from mtlbench.stats import GradientStats, PerTaskGradients, cosines, wide
from mtlbench.strategies.base import Combiner, GradientWeighting, SetupContext, Strategy, parts
from mtlbench.tasks import TaskSpec
from mtlbench.tb import RunLogger, flatten_hparams
from mtlbench.threads import apply_num_threads

log = logging.getLogger("mtlbench")
LINEAR_POLICY = {"auto": "by multiply-add count", "direct": "from per-task weight gradients",
                 "kernel": "from the B×B kernel"}
FULL_PRECISION = Precision()
AUTO_ENGINE = GradientEngine()


# ----------------------------------------------------------------------------- setup helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available (with several GPUs: one claimed for this run alone,
    :mod:`mtlbench.gpus`), else cpu; anything else as given, if this machine has it."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if count < 2:
            return torch.device("cuda")
        index = claim_gpu(count)
        torch.cuda.set_device(index)
        log.info("GPU %d of %d claimed for this run (one job per GPU; mtlbench/gpus.py)", index,
                 count)
        return torch.device("cuda", index)
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            why = (f"this torch ({torch.__version__}) has no CUDA" if torch.version.cuda is None
                   else f"{count} CUDA device(s) visible")
            raise ConfigError(f"`trainer.device={name}` is not available ({why}); accepted here: "
                              f"{', '.join(available_devices())}.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"`trainer.device={name}` is not available (no MPS backend); accepted "
                          f"here: {', '.join(available_devices())}.")
    return device


def available_devices() -> list[str]:
    """The ``trainer.device`` values this machine can run."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training steps in one epoch of ``n`` examples (the last partial batch is dropped)."""
    return max(n // batch_size, 1)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """Indices of training batch ``step``: epoch e is a permutation seeded by (seed, e), the last
    partial batch dropped. A pure function of ``step``, so resuming needs no data-order state."""
    epoch, i = divmod(step, steps_per_epoch(n, batch_size))
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)
    perm = torch.randperm(n, generator=gen)
    return perm[i * batch_size:(i + 1) * batch_size]


def task_losses(tasks: list[TaskSpec], outputs: dict[str, Tensor],
                targets: dict[str, Tensor]) -> Tensor:
    """The vector of transformed task losses [n], in task order, in float32 at least (outputs of
    an autocast forward are bfloat16 / float16)."""
    return torch.stack(task_loss_list(tasks, outputs, targets))


def task_loss_list(tasks: list[TaskSpec], outputs: dict[str, Tensor],
                   targets: dict[str, Tensor]) -> list[Tensor]:
    """:func:`task_losses` as n scalars (each task's own graph, not through a stack)."""
    return [t.loss(outputs[t.name].float() if outputs[t.name].dtype in HALF
                   else outputs[t.name], targets[t.name]) for t in tasks]


def gradient_params(model: MultiTaskModel, source: str) -> list[torch.nn.Parameter]:
    """Parameters over which per-task gradients are taken ([] means the representation)."""
    return {"shared": model.shared_parameters, "last_shared": model.last_shared_parameters,
            "representation": list}[source]()


def optimizer_implementation(optimizer: torch.optim.Optimizer) -> str:
    """Which of torch's implementations the optimizer was asked for (``optimizer.fused`` /
    ``optimizer.foreach``): ``fused``, ``foreach``, ``for_loop`` (``foreach=false``) or
    ``default`` (torch's choice at the step: the for-loop on the CPU, ``foreach`` on CUDA)."""
    if optimizer.defaults.get("fused"):
        return "fused"
    foreach = optimizer.defaults.get("foreach")
    return "default" if foreach is None else "foreach" if foreach else "for_loop"


def build_optimizer(cfg: DictConfig, model: MultiTaskModel,
                    strategy: Strategy) -> torch.optim.Optimizer:
    """The ``optimizer`` group over the network, plus the learnable parameters of the strategy (and
    of its stacked loss weighting) as their own parameter group each (own learning rate if the
    strategy has one, no weight decay)."""
    optimizer = instantiate_group("optimizer", cfg, params=model.parameters())
    for part in parts(strategy):
        learned = part.parameters()
        if learned:
            group: dict[str, Any] = {"params": learned, "weight_decay": 0.0}
            if part.lr is not None:
                group["lr"] = part.lr
            optimizer.add_param_group(group)
    return optimizer


@torch.no_grad()
def measure_losses(model: MultiTaskModel, data: MultiTaskData, batches: int, batch_size: int,
                   seed: int) -> Tensor:
    """Mean transformed loss per task over ``batches`` training batches (eq. 2, measured), in
    training mode (as the first steps see the model: batch statistics, dropout averaged over the
    batches); the buffers a forward pass updates (BatchNorm's running statistics) are restored, so
    the measurement leaves the model as it found it."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    total = torch.zeros(len(data.tasks), dtype=torch.float64)
    for b in range(batches):
        idx = batch_indices(b, len(data.train), batch_size, seed + 7919)
        idx = idx.to(data.train.inputs.device)
        x, y = data.train.batch(idx)
        total += task_losses(data.tasks, model(x)[1], y).double().cpu()
    for name, value in model.named_buffers():
        value.copy_(buffers[name])
    return total / batches


# ----------------------------------------------------------------------------- one step
@dataclass
class StepResult:
    """What one step leaves for logging: detached losses [n], effective weights [n], the
    per-task gradient statistics (norms [n], Gramian [n, n]; None for loss-side strategies),
    whether everything was finite, whether the step was applied (``16-mixed``: a step whose
    gradients overflowed the loss scale is skipped, not counted as a divergence), and the linear
    layers whose Gramian came from the B×B kernel (``params=shared``). Only statistics are kept,
    not the per-task gradients (which would double peak memory across steps)."""

    losses: Tensor
    weights: Tensor
    grads: GradientStats | None
    finite: bool
    applied: bool = True
    kernel_layers: list[str] | None = None
    running_sum: bool = False
    tasks_per_block: int | None = None  # the running sum's (None without it)
    #: the same batch's losses after the applied step (a strategy's ``losses_after_step``)
    losses_after: Tensor | None = None


def train_step(model: MultiTaskModel, tasks: list[TaskSpec], x: Tensor, y: dict[str, Tensor],
               strategy: Strategy, optimizer: torch.optim.Optimizer,
               precision: Precision | None = None,
               engine: GradientEngine | None = None, log_gradients: bool = False) -> StepResult:
    """Forward, per-task losses, (gradient statistics), strategy weights, backward, optimizer step.

    A gradient-side strategy is asked for its weights inside the backward, when the gradient
    reaches the shared representation (:func:`mtlbench.gradients.weighted_backward`; for
    ``params=shared`` the engine takes one backward per task instead, and a ``separable``
    weighting's factors are asked for task by task). One host sync: the finiteness check of the
    losses, weights and gradients (the ``.tolist()`` of logging happens only at log steps, in
    :func:`log_step`); the running sum's update is left out of it where its norms prove it finite
    (:func:`mtlbench.gradients.bounded_update`). ``precision``: autocast and, for
    ``16-mixed``, loss scaling (:mod:`mtlbench.precision`); default float32. ``engine``: how
    per-task gradients over the shared parameters are computed (default: ``auto`` for both
    choices of :class:`mtlbench.gradients.GradientEngine`). ``log_gradients``: this step's
    gradient statistics (norms and Gramian) are logged; a ``separable`` weighting, whose
    weighted gradients are added up task by task (:func:`runs_separably`), computes them only
    then (``StepResult.grads`` is None otherwise), with the same update either way.
    """
    precision = precision or FULL_PRECISION
    scaler, scale = precision.scaler, precision.scale()
    optimizer.zero_grad(set_to_none=True)
    stats, kernel, running, proven, block = None, None, False, (), None
    if strategy.kind == "loss":
        with precision.autocast():
            outputs = model(x)[1]
        losses = task_losses(tasks, outputs, y)
        weights = strategy.weights(losses.detach(), None).detach()
        if strategy.parameters():  # learned weights: their gradient comes from the objective
            total = strategy.objective(losses)
        else:
            total = torch.dot(weights.to(losses.dtype), losses)
        (total if scaler is None else scaler.scale(total)).backward()
    else:  # gramian or combiner: the per-task gradients are weighed inside the one backward
        names, source = [t.name for t in tasks], strategy.gradient_source
        engine = engine or AUTO_ENGINE
        heads = [model.head_parameters(name) for name in names]
        params = gradient_params(model, source)
        running = runs_separably(strategy, engine, x.device, params, scaler is not None)
        with precision.autocast():  # a combiner needs every gradient: no kernel path for it
            fwd = split_forward(model.backbone, model.heads, x, names, at_last_shared=(
                source == "last_shared" and splits_at_last_shared(model.backbone)),
                capture_linear=(source == "shared" and strategy.kind == "gramian"
                                and may_take_kernel(model.backbone, len(x), len(tasks),
                                                    engine.linear)),
                aliased=not running)  # the running sum differentiates the losses themselves
        per_task = task_loss_list(tasks, fwd.outputs, y)
        losses = torch.stack(per_task).detach()  # (each task's graph is its own scalar's)
        if running:
            assert isinstance(strategy, GradientWeighting)
            summed = shared_by_running_sum(
                per_task, fwd, params, heads, separable_weigh(strategy, losses),
                engine.linear, statistics=log_gradients)
            scale_heads(heads, summed.decision.head_weights)
            weights = summed.decision.weights.detach()
            kernel, stats, block = summed.kernel_layers, summed.stats, summed.tasks_per_block
            proven = {id(p) for p in summed.finite}  # bounded by the norms: no pass over them
        else:
            weights, grads = weighted_backward(
                per_task if scaler is None else [scaler.scale(loss) for loss in per_task], fwd,
                params, heads, model.shared_parameters(),
                strategy_weigh(strategy, losses, scale),
                covers_shared=source == "shared", engine=engine)
            weights, stats, kernel = weights.detach(), grads.stats, grads.kernel_layers
            if scale != 1.0 and stats is not None:  # logged as the strategy saw them: unscaled
                stats = GradientStats(stats.norms / scale, stats.gramian / scale ** 2)
        for part in parts(strategy)[1:]:  # a stacked loss weighting's learned parameters
            if part.parameters():
                objective = part.objective(losses)
                (objective if scaler is None else scaler.scale(objective)).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    grads_of = [p.grad for group in optimizer.param_groups for p in group["params"]
                if p.grad is not None and id(p) not in proven]
    losses = losses.detach()
    finite = all_finite([losses, weights, *grads_of])
    if scaler is not None:
        scaler.update()  # lowers S if unscale_ found a non-finite gradient
        if not finite and all_finite([losses]):  # the gradients overflowed S (and the
            return StepResult(  # weights derived from them with it)
                losses, weights, stats, finite=True, applied=False, kernel_layers=kernel)
    after = None
    if finite:
        optimizer.step()
        if any(part.losses_after_step for part in parts(strategy)):
            with torch.no_grad(), precision.autocast():  # the same batch, updated parameters
                after = task_losses(tasks, model(x)[1], y)
    return StepResult(losses, weights, stats, finite, kernel_layers=kernel,
                      running_sum=running, tasks_per_block=block, losses_after=after)


def strategy_state(strategy: Strategy) -> list[dict[str, Any]]:
    """A copy of each part's ``state_dict`` (the strategy and a stacked loss weighting), taken
    before a step that may be skipped: strategies may update their state while they weigh the
    step (GradNorm's weights, DB-MTL's moving average, CR-MOGM's last weights), before the loop
    knows whether the step is finite."""
    return [copy.deepcopy(part.state_dict()) for part in parts(strategy)]


def restore_strategy(strategy: Strategy, saved: list[dict[str, Any]]) -> None:
    """Put back what :func:`strategy_state` copied: a skipped step changes no strategy state (a
    NaN it saw would otherwise stay in a moving average or a learned weight for good)."""
    for part, state in zip(parts(strategy), saved, strict=True):
        part.load_state_dict(state)


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of every tensor is finite: one fused pass, one host sync.

    torch's own fused check (``_amp_foreach_non_finite_check_and_unscale_``, GradScaler's kernel)
    with a factor of exactly 1, so nothing changes (x · 1 = x for every float, subnormals and −0
    included): one pass over the gradients that sets a flag, ~5× cheaper on the CPU than the
    float64 sums it replaces (0.018 vs 0.097 ms for an MLP 784-256-256 step, median of 300). Where
    the kernel is unavailable: each tensor summed in float64 (non-finite iff some entry is)."""
    try:
        devices = {t.device for t in tensors}
        flags = []
        for device in devices:  # usually one: the whole list in one call
            found = torch.zeros(1, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(
                tensors if len(devices) == 1 else [t for t in tensors if t.device == device],
                found, _unit(device))
            flags.append(found)
        return not any(flag.item() for flag in flags)
    except (RuntimeError, NotImplementedError):  # e.g. a backend without the kernel
        dtype = wide(tensors[0])  # float64; float32 on MPS (which has no float64)
        total = torch.stack([t.sum(dtype=dtype) for t in tensors]).sum()
        return bool(torch.isfinite(total))


_UNITS: dict[torch.device, Tensor] = {}


def _unit(device: torch.device) -> Tensor:
    """A float32 1 on ``device``, made once (the check's inverse scale; it is only read)."""
    if device not in _UNITS:
        _UNITS[device] = torch.ones(1, device=device)
    return _UNITS[device]


def runs_separably(strategy: Strategy, engine: GradientEngine, device: torch.device,
                   params: list[torch.nn.Parameter], scaled: bool) -> bool:
    """Whether the step adds up a ``separable`` weighting's gradients task by task
    (:func:`mtlbench.gradients.shared_by_running_sum`): ``params=shared`` (of one dtype) with the
    loop traversal, no stacked loss weighting and no loss scale (``16-mixed``). Decided by the
    configuration alone, so every step of a run (and of its resumes) takes the same path."""
    return (isinstance(strategy, GradientWeighting) and strategy.separable
            and strategy.loss_weighting is None and strategy.gradient_source == "shared"
            and not scaled and bool(params) and all(p.dtype == params[0].dtype for p in params)
            and (engine.traversal == "loop" or engine.resolved(device).traversal == "loop"))


def separable_weigh(strategy: GradientWeighting, losses: Tensor) -> SeparableWeigh:
    """A ``separable`` weighting's factors h_i and c, and its decision, for
    :func:`mtlbench.gradients.shared_by_running_sum`; ``losses`` [n] detached."""
    def own(tasks: slice, norms: Tensor) -> Tensor:
        return strategy.own_factors(losses[tasks], norms)

    def finish(norms: Tensor, own_factors: Tensor) -> tuple[Tensor | None, Decision]:
        common = strategy.common_factor(losses, norms)
        weights = strategy.separated_weights(losses, own_factors, common)
        return common, Decision(weights, strategy.head_weights(losses, weights))
    return SeparableWeigh(own, finish)


def strategy_weigh(strategy: Strategy, losses: Tensor, scale: float = 1.0) -> Weigh:
    """The strategy's answer to this step's per-task gradients, by kind: a Gramian weighting's
    weights over their statistics (``GradientWeighting.decide``), or a combiner's shared update.
    ``scale``: the loss scale S the gradients carry (``16-mixed``); the strategy sees them
    unscaled, and a combiner's update is scaled back by S (the optimizer unscales every .grad)."""
    def weigh(grads: TaskGradients) -> Decision:
        stats = grads.stats if scale == 1.0 else GradientStats(
            grads.stats.norms / scale, grads.stats.gramian / scale ** 2)
        if scale != 1.0 and not bool(torch.isfinite(stats.gramian).all()):
            # the gradients overflowed S: NaN weights, and the step is skipped as an overflow
            return Decision(torch.full_like(losses, math.nan), None)
        if isinstance(strategy, Combiner):
            per_param = grads.per_param if scale == 1.0 else [g / scale for g in grads.per_param]
            c = strategy.combine(losses, PerTaskGradients(per_param, stats))
            update = c.update if scale == 1.0 else [u * scale for u in c.update]
            return Decision(c.weights, c.head_weights, update)
        assert isinstance(strategy, GradientWeighting)
        return Decision(*strategy.decide(losses, stats))
    return weigh


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: MultiTaskModel, tasks: list[TaskSpec], split: Split, batch_size: int,
             precision: Precision | None = None) -> dict[str, dict[str, float]]:
    """Per task: ``loss`` (transformed training loss) and its metric, averaged over the split
    (forward passes under the run's autocast, losses and metrics in float32)."""
    precision = precision or FULL_PRECISION
    model.eval()
    sums = {t.name: {"loss": 0.0, t.metric: 0.0} for t in tasks}
    n = len(split)
    for lo in range(0, n, batch_size):
        idx = torch.arange(lo, min(lo + batch_size, n), device=split.inputs.device)
        x, y = split.batch(idx)
        with precision.autocast():
            outputs = model(x)[1]
        outputs = {name: out.float() for name, out in outputs.items()}
        for t in tasks:
            share = len(idx) / n
            sums[t.name]["loss"] += share * float(t.loss(outputs[t.name], y[t.name]))
            sums[t.name][t.metric] += share * float(t.metric_value(outputs[t.name], y[t.name]))
    model.train()
    return sums


# ----------------------------------------------------------------------------- logging
def log_step(logger: RunLogger, tasks: list[TaskSpec], step: int, result: StepResult) -> None:
    """``train/loss/<task>`` and ``train/weight/<task>`` of one step (every ``log_every``)."""
    names = [t.name for t in tasks]
    logger.scalars("train/loss", dict(zip(names, result.losses.tolist(), strict=True)), step)
    logger.scalars("train/weight", dict(zip(names, result.weights.tolist(), strict=True)), step)


def log_gradients(logger: RunLogger, tasks: list[TaskSpec], step: int, result: StepResult) -> None:
    """``train/grad_norm/<task>`` and ``train/grad_cos/<a>__<b>`` of a step that computed its
    gradient statistics (every ``grad_log_every``; gradient-side strategies)."""
    names = [t.name for t in tasks]
    if result.grads is not None:
        stats = result.grads
        logger.scalars("train/grad_norm", dict(zip(names, stats.norms.tolist(), strict=True)), step)
        cos = cosines(stats.gramian)
        pairs = {f"{a}__{b}": float(cos[i, j]) for i, a in enumerate(names)
                 for j, b in enumerate(names) if i < j}
        logger.scalars("train/grad_cos", pairs, step)


def log_eval(logger: RunLogger, prefix: str, metrics: dict[str, dict[str, float]],
             step: int) -> None:
    for task, values in metrics.items():
        for metric, value in values.items():
            logger.writer.add_scalar(f"{prefix}/{metric}/{task}", value, step)


def summary_table(tasks: list[TaskSpec], metrics: dict[str, dict[str, float]]) -> str:
    """A one-screen table of the final test metrics."""
    rows = [f"{'task':<16} {'kind':<14} {'loss':>12} {'metric':>9} {'value':>12}"]
    for t in tasks:
        m = metrics[t.name]
        rows.append(f"{t.name:<16} {t.kind:<14} {m['loss']:>12.5g} {t.metric:>9} "
                    f"{m[t.metric]:>12.5g}")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- the run
def run(cfg: DictConfig, run_dir: Path, strategy_name: str, *, interactive: bool = False,
        config_files: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one configuration in ``run_dir``; returns the metrics written to ``metrics.json``.

    The dir is owned for the whole run (:class:`mtlbench.rundir.RunDir`); everything is validated
    and built before the first write; a finished run of the same config is returned untouched.
    ``config_files``: ``.hydra/<name>`` texts to record once the run is accepted.
    """
    validate(cfg)
    tcfg = cfg.trainer
    device = resolve_device(tcfg.device)
    values = rundir.result_config(OmegaConf.to_container(cfg, resolve=True))
    with rundir.RunDir(run_dir) as owned:
        threads = apply_num_threads(tcfg.num_threads)
        if tcfg.retain_cpu_memory:
            retain_freed_memory()
        seed_everything(cfg.seed)
        if tcfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        data = build_data(cfg.data, cfg.seed).to(device)
        strategy: Strategy = instantiate_group("strategy", cfg.strategy, _convert_="all")
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"`strategy._target_` must name an mtlbench strategy class (a "
                              f"Strategy); `{cfg.strategy._target_}` gave a "
                              f"{type(strategy).__name__}.")
        model = build_model(cfg.model, data.input_shape, data.tasks).to(device)
        check_report_metric(tcfg.report_metric, data.tasks)
        context = SetupContext(  # on resume, replaced by the checkpoint's strategy state
            tasks=data.tasks, train_targets=data.train.targets,
            measure_losses=lambda k: measure_losses(model, data, k, tcfg.batch_size, cfg.seed))
        for part in parts(strategy):
            part.setup(context)
        optimizer = build_optimizer(cfg.optimizer, model, strategy)
        precision = build_precision(tcfg.precision, device)
        per_epoch = steps_per_epoch(len(data.train), tcfg.batch_size)
        total = tcfg.max_steps if tcfg.max_steps is not None else tcfg.epochs * per_epoch
        schedule = build_scheduler(cfg.scheduler, optimizer, total, per_epoch)
        criterion = build_criterion(tcfg, data.tasks, has_val=len(data.val) > 0)

        prior = owned.inspect(values, fresh=tcfg.resume == "fresh", load_checkpoint=checkpoint.load)
        if prior.state == "done":
            log.info("Run dir %s already holds the finished run of this configuration "
                     "(metrics.json); nothing to do.", owned.path)
            return prior.metrics or {}
        start, counters, best = 0, {}, None
        if prior.checkpoint is not None:
            start, counters = checkpoint.restore(prior.checkpoint, prior.checkpoint_path, model,
                                                 optimizer, schedule.scheduler, strategy)
            best = prior.checkpoint.get("selection")
            if precision.scaler is not None and prior.checkpoint.get("scaler"):
                precision.scaler.load_state_dict(prior.checkpoint["scaler"])
        owned.claim(prior, config_files)
        log.info("CPU threads: %d (trainer.num_threads=%d)", threads, tcfg.num_threads)
        if start:
            log.info("Resumed from checkpoint at step %d in %s", start, run_dir)
        elif prior.stale:
            log.info("Starting over in %s: removed %s of an earlier attempt", run_dir,
                     prior.stale_summary())
        engine = GradientEngine(tcfg.gradient_engine, tcfg.linear_gramian).resolved(device)
        if strategy.kind != "loss":
            log.info("Per-task gradients: %s traversal (trainer.gradient_engine=%s), linear "
                     "layers' Gramians %s (trainer.linear_gramian=%s)", engine.traversal,
                     tcfg.gradient_engine, LINEAR_POLICY[engine.linear], tcfg.linear_gramian)
        loop = Loop(cfg, run_dir, strategy_name, data, model, optimizer, schedule, strategy,
                    values, total, per_epoch, precision, criterion, best, engine=engine,
                    how={"device": str(device), "num_threads": threads,
                         "optimizer_implementation": optimizer_implementation(optimizer)})
        metrics = finish(loop, loop.train(start, counters, interactive))
        if loop.stop_requested:
            raise Interrupted(f"Interrupted during the last step; the run finished: "
                              f"{owned.path / 'metrics.json'} is written.", run_dir)
        return metrics


@dataclass
class Loop:
    """Everything one training run holds; :meth:`train` is the loop itself."""

    cfg: DictConfig
    run_dir: Path
    strategy_name: str
    data: MultiTaskData
    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    strategy: Strategy
    config_values: dict[str, Any]
    total_steps: int
    per_epoch: int
    precision: Precision
    #: ``trainer.select=best_val``: the criterion, and the best evaluation so far (``step``,
    #: ``value`` to minimize, ``model`` state); None with ``select=last``.
    criterion: Criterion | None = None
    best: dict[str, Any] | None = None
    engine: GradientEngine = GradientEngine()
    #: the linear layers whose Gramian came from the B×B kernel (first step that reported it)
    kernel_layers: list[str] | None = None
    #: whether the steps add up a separable weighting's gradients task by task (same step),
    #: and how many tasks' gradients at once
    running_sum: bool = False
    tasks_per_block: int | None = None
    #: how this process trains (device, threads, optimizer implementation): its segment's
    #: description (:mod:`mtlbench.segments`), the gradient engine added once a step reports it
    how: dict[str, Any] = field(default_factory=dict)
    #: the segments of earlier processes (from the checkpoint), and this one's first step
    segments_before: list[dict[str, Any]] = field(default_factory=list)
    first_step: int = 0
    seconds_before: float = 0.0
    started: float = 0.0
    overflow: int = 0
    #: the last validation: {"step", "metrics"} (carried in checkpoints), None before the first
    last_val: dict[str, Any] | None = None
    #: Ctrl-C during the last step: the run finishes, then stops (a sweep goes no further)
    stop_requested: bool = False

    def may_skip(self) -> bool:
        """Whether a step may be skipped and training go on (``on_nonfinite=skip_step``, or a
        loss scale's overflow under ``16-mixed``): then the strategy's state is copied before
        each step and put back after one that was not applied."""
        return (self.cfg.trainer.on_nonfinite == "skip_step"
                or self.precision.scaler is not None)

    def save(self, step: int, skipped: int) -> Path:
        tcfg = self.cfg.trainer
        counters = {"skipped_steps": skipped, "train_seconds": self.seconds(),
                    "overflow_steps": self.overflow, "segments": self.ran_segments(step),
                    "val": self.last_val}
        return checkpoint.save(self.run_dir, step, self.model, self.optimizer,
                               self.schedule.scheduler, self.strategy, keep=tcfg.keep_checkpoints,
                               counters=counters, config=self.config_values, selection=self.best,
                               scaler=None if self.precision.scaler is None
                               else self.precision.scaler.state_dict())

    def seconds(self) -> float:
        """Seconds spent in :meth:`train` by this run, earlier attempts that checkpointed included
        (the time after an attempt's last checkpoint is lost with it)."""
        return self.seconds_before + time.perf_counter() - self.started

    def ran_segments(self, step: int) -> list[dict[str, Any]]:
        """The run's segments up to ``step``: the earlier processes' and this one's."""
        engine = None if self.kernel_layers is None else {
            "traversal": self.engine.traversal, "running_sum": self.running_sum,
            "tasks_per_block": self.tasks_per_block, "kernel_layers": self.kernel_layers}
        this = segments.segment(self.first_step, step, time.perf_counter() - self.started,
                                {**self.how, "gradient_engine": engine})
        return [*self.segments_before, this]

    def consider(self, step: int, val: dict[str, dict[str, float]]) -> None:
        """``best_val``: keep the model of this evaluation if it beats the best so far."""
        if self.criterion is None:
            return
        value = self.criterion.value(val)
        if self.best is None or value < self.best["value"]:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"step": step, "value": value, "model": state}

    def selected_test(self, last: dict[str, dict[str, float]],
                      last_val: dict[str, dict[str, float]]) -> dict[str, Any]:
        """The metrics.json entries of ``best_val``: the selected model's test and validation
        metrics (``tasks``, ``val``: what is reported, and what ``trainer.report_metric`` reads;
        the model is left holding its parameters; ``test/*`` in TensorBoard), its step and
        criterion, and the last model's under ``last`` (``test_last/*``)."""
        assert self.criterion is not None and self.best is not None
        tasks, tcfg = self.data.tasks, self.cfg.trainer
        log_eval(self.logger, "test_last", last, self.total_steps)
        self.model.load_state_dict(self.best["model"])
        test = evaluate(self.model, tasks, self.data.test, tcfg.eval_batch_size,
                        self.precision)
        val = evaluate(self.model, tasks, self.data.val, tcfg.eval_batch_size, self.precision)
        log_eval(self.logger, "test", test, self.total_steps)
        log.info("Selected step %d of %d by %s = %.6g", self.best["step"], self.total_steps,
                 self.criterion.name, self.criterion.reported(self.best["value"]))
        return {
            "tasks": {t.name: {"kind": t.kind, **test[t.name]} for t in tasks},
            "val": val,
            "selected": {"step": int(self.best["step"]), "criterion": self.criterion.name,
                         "value": self.criterion.reported(self.best["value"])},
            "last": {"step": self.total_steps,
                     "tasks": {t.name: {"kind": t.kind, **last[t.name]} for t in tasks},
                     "val": last_val},
        }

    def train(self, start: int, counters: dict[str, float], interactive: bool) -> dict[str, Any]:
        """Steps ``start`` … ``total_steps - 1``, evaluation, checkpoints; returns the metrics."""
        cfg, tcfg, data = self.cfg, self.cfg.trainer, self.data
        tasks, names, device = data.tasks, [t.name for t in data.tasks], data.train.inputs.device
        skipped = counters.get("skipped_steps", 0)
        self.overflow = int(counters.get("overflow_steps", 0))
        self.last_val = counters.get("val")
        self.seconds_before, self.started = counters.get("train_seconds", 0.0), time.perf_counter()
        self.first_step = start
        self.segments_before = list(counters.get("segments", [])) or (
            [segments.unrecorded(start, self.seconds_before)] if start else [])
        total, per_epoch = self.total_steps, self.per_epoch
        max_skipped = math.floor(tcfg.max_skip_fraction * total)
        eval_every = per_epoch if tcfg.eval_every == "epoch" else tcfg.eval_every
        bar = interactive if tcfg.progress == "auto" else tcfg.progress == "on"
        with StopOnInterrupt() as interrupt, Progress(total, bar, names=names) as progress:
            self.logger = RunLogger(self.run_dir, names, purge_step=start or None)
            self.resume_validation(start)
            for step in range(start, total):
                idx = batch_indices(step, len(data.train), tcfg.batch_size, cfg.seed).to(device)
                x, y = data.train.batch(idx)
                logs_gradients = step % tcfg.grad_log_every == 0
                lr = self.optimizer.param_groups[0]["lr"]  # this step's (before the schedule)
                before = strategy_state(self.strategy) if self.may_skip() else None
                result = train_step(self.model, tasks, x, y, self.strategy, self.optimizer,
                                    self.precision, self.engine, logs_gradients)
                if before is not None and not (result.finite and result.applied):
                    restore_strategy(self.strategy, before)  # a step not taken leaves no trace
                if self.kernel_layers is None and result.kernel_layers is not None:
                    self.kernel_layers, self.running_sum = result.kernel_layers, result.running_sum
                    self.tasks_per_block = result.tasks_per_block
                    log.info("B×B-kernel Gramian for the linear layers: %s%s",
                             ", ".join(result.kernel_layers) or "none",
                             "; separable weights: h_i g_i added up as the gradients arrive "
                             f"({result.tasks_per_block} task(s) at a time), the Gramian only on "
                             "steps that log it" if result.running_sum else "")
                if not result.applied:
                    self.overflow += 1
                    self.logger.writer.add_scalar("train/overflow_steps", self.overflow, step)
                for part in parts(self.strategy):
                    if result.finite and result.applied:
                        part.after_step(result.losses)
                        if result.losses_after is not None and part.losses_after_step:
                            part.after_step_losses(result.losses, result.losses_after)
                    if (step + 1) % per_epoch == 0:
                        part.end_of_epoch(step // per_epoch)
                if not result.finite:
                    skipped += 1
                    self.check_divergence(step, names, result, skipped, max_skipped)
                    self.logger.writer.add_scalar("train/skipped_steps", skipped, step)
                self.schedule.after_step(step, per_epoch)
                if step % tcfg.log_every == 0:
                    log_step(self.logger, tasks, step, result)
                    self.logger.writer.add_scalar("train/lr", lr, step)
                if logs_gradients:
                    log_gradients(self.logger, tasks, step, result)
                if (step + 1) % eval_every == 0 or step + 1 == total:
                    val = evaluate(self.model, tasks, data.val, tcfg.eval_batch_size,
                                   self.precision)
                    log_eval(self.logger, "val", val, step + 1)
                    log.info("step %d/%d  val %s", step + 1, total, _brief(tasks, val))
                    self.consider(step + 1, val)
                    self.last_val = {"step": step + 1, "metrics": val}
                if tcfg.checkpoint_every and (step + 1) % tcfg.checkpoint_every == 0:
                    self.save(step + 1, skipped)
                progress.update(step + 1, result.losses)
                if interrupt.requested and step + 1 < total:
                    progress.close()
                    self.interrupted(step + 1, skipped)
            self.stop_requested = interrupt.requested  # during the last step: finish, then stop
        test = evaluate(self.model, tasks, data.test, tcfg.eval_batch_size, self.precision)
        if self.criterion is None:  # (best_val logs the selected model's, and the last's apart)
            log_eval(self.logger, "test", test, total)
        metrics = {
            "strategy": self.strategy_name,
            "seed": int(cfg.seed),
            "steps": int(total),
            "epochs": total / per_epoch,
            "steps_per_epoch": per_epoch,
            "tasks": {t.name: {"kind": t.kind, **test[t.name]} for t in tasks},
            "val": self.last_val["metrics"] if self.last_val else {},
            "skipped_steps": skipped,
            "train_seconds": round(self.seconds(), 3),
            **({"overflow_steps": self.overflow} if self.precision.scaler is not None else {}),
        }
        ran = self.ran_segments(total)
        metrics.update(segments.described(ran), segments=ran)
        if self.criterion is not None:
            metrics.update(self.selected_test(test, metrics["val"]))
        return metrics

    def resume_validation(self, start: int) -> None:
        """On a resume at step ``start``: the checkpoint's last validation, logged again where
        it was taken at ``start`` (the resume purges TensorBoard's events from ``start`` on), and
        taken now when the run resumes at its end without one (a checkpoint written before
        validations were carried: the model is the one it was taken on)."""
        if not start:
            return
        if self.last_val is None and start == self.total_steps:
            tcfg = self.cfg.trainer
            self.last_val = {"step": start, "metrics": evaluate(
                self.model, self.data.tasks, self.data.val, tcfg.eval_batch_size, self.precision)}
        if self.last_val is not None and self.last_val["step"] == start:
            log_eval(self.logger, "val", self.last_val["metrics"], start)

    def check_divergence(self, step: int, names: list[str], result: StepResult, skipped: int,
                         max_skipped: int) -> None:
        """Stop on a non-finite step (``on_nonfinite=error``) or once more than
        ``trainer.max_skip_fraction`` of the run was skipped."""
        tcfg = self.cfg.trainer
        kept = _checkpoint_note(self.run_dir, tcfg.checkpoint_every)
        if tcfg.on_nonfinite == "error":
            raise TrainingDiverged(_divergence_message(step, names, result, self.strategy_name)
                                   + kept)
        if skipped > max_skipped:
            raise TrainingDiverged(
                f"Training diverged (strategy {self.strategy_name}): {skipped} non-finite steps "
                f"skipped by step {step}, more than trainer.max_skip_fraction="
                f"{tcfg.max_skip_fraction} of the {self.total_steps} steps. {kept.strip()} "
                "Lower optimizer.lr, or raise trainer.max_skip_fraction."
            )

    def interrupted(self, step: int, skipped: int) -> None:
        path = self.save(step, skipped)
        self.logger.close()
        raise Interrupted(f"Interrupted at step {step}/{self.total_steps}; checkpoint saved as "
                          f"{path}.", self.run_dir)


def finish(loop: Loop, metrics: dict[str, Any]) -> dict[str, Any]:
    """HParams, ``metrics.json`` (strict JSON: non-finite values as null, listed under
    ``nonfinite``) and the summary table."""
    tasks, cfg = loop.data.tasks, loop.cfg
    test = {t.name: metrics["tasks"][t.name] for t in tasks}
    hp = flatten_hparams(OmegaConf.to_container(cfg, resolve=True))
    hp["strategy"] = loop.strategy_name
    loop.logger.hparams(hp, {f"hparams/test_{t.metric}/{t.name}": test[t.name][t.metric]
                             for t in tasks})
    loop.logger.close()
    metrics["config"] = loop.config_values
    clean, bad = strict_json(metrics)
    if bad:
        clean["nonfinite"] = bad
        log.warning("Non-finite final metrics (written as null): %s", ", ".join(bad))
    write_json_atomic(loop.run_dir / "metrics.json", clean)
    log.info("Final test metrics (%s, seed %d):\n%s", loop.strategy_name, cfg.seed,
             summary_table(tasks, test))
    return clean


def strict_json(node: Any, path: str = "") -> tuple[Any, list[str]]:
    """``node`` with every non-finite float replaced by None, and the dotted paths replaced."""
    if isinstance(node, float) and not math.isfinite(node):
        return None, [path]
    if isinstance(node, dict):
        out, bad = {}, []
        for key, value in node.items():
            out[key], sub = strict_json(value, f"{path}.{key}" if path else str(key))
            bad += sub
        return out, bad
    return node, []


class Interrupted(MtlbenchError):
    """Ctrl-C: the run stopped at a step boundary after writing a checkpoint, or finished if it
    came during its last step (exit status 130). ``str()``: what happened and how to resume a
    single run; :attr:`what` alone, for a sweep's own advice."""

    def __init__(self, what: str, run_dir: Path) -> None:
        self.what, self.run_dir = what, run_dir
        super().__init__(f"{what} To resume, run the same command with "
                         f"{override_text('hydra.run.dir', run_dir)}.")


def override_text(key: str, value: object) -> str:
    """``key=value`` as a command-line override, quoted where Hydra's grammar needs it (a path
    with ``=``, ``,`` or spaces, as a sweep's job dirs have)."""
    text = str(value)
    if re.search(r"[=,\s'\"\[\]{}()]", text):
        return "'" + key + '="' + text.replace('"', '\\"') + '"' + "'"
    return f"{key}={text}"


class StopOnInterrupt:
    """The first Ctrl-C (SIGINT) asks the loop to stop after the current step; a second one
    interrupts at once. Only in the main thread (signal handlers cannot be set elsewhere)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this step and writing a checkpoint "
                    "(press Ctrl-C again to stop at once).")

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _checkpoint_note(run_dir: Path, every: int) -> str:
    found = checkpoint.list_checkpoints(run_dir)
    if found:
        return f" The last checkpoint (step {found[-1][0]}) is kept."
    return (" No checkpoint was written yet." if every else
            " No checkpoint was written (trainer.checkpoint_every=0).")


def check_report_metric(name: str | None, tasks: list[TaskSpec]) -> None:
    """``trainer.report_metric`` must be ``val|test/<metric>/<task>`` for a task of this run."""
    if name is None:
        return
    accepted = [f"{split}/{t.metric}/{t.name}" for split in ("val", "test") for t in tasks]
    accepted += [f"{split}/loss/{t.name}" for split in ("val", "test") for t in tasks]
    if name not in accepted:
        raise ConfigError(
            f"`trainer.report_metric` must be one of {', '.join(sorted(accepted))}. "
            f"Found `trainer.report_metric = {name}`."
        )


def _brief(tasks: list[TaskSpec], metrics: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{t.name}:{t.metric}={metrics[t.name][t.metric]:.4g}" for t in tasks)


def _divergence_message(step: int, names: list[str], result: StepResult, strategy: str) -> str:
    bad = [n for n, v, w in zip(names, result.losses.tolist(), result.weights.tolist(), strict=True)
           if not (math.isfinite(v) and math.isfinite(w))]
    where = f"task {', '.join(bad)}" if bad else "the gradients"
    return (f"Training diverged at step {step} (strategy {strategy}): non-finite values in "
            f"{where}; lower optimizer.lr or set trainer.on_nonfinite=skip_step.")
