"""The training loop, top to bottom: build → strategy setup → steps → evaluate → checkpoint →
metrics.json.

This is the only module that calls ``backward()`` and ``optimizer.step()``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from mtlbench import checkpoint
from mtlbench.allocator import retain_freed_memory
from mtlbench.config import validate
from mtlbench.data import MultiTaskData, Split, build_data
from mtlbench.errors import ConfigError, TrainingDiverged
from mtlbench.files import write_json_atomic
from mtlbench.gradients import (
    TaskGradients,
    Weigh,
    cosines,
    split_forward,
    splits_at_last_shared,
    weighted_backward,
)
from mtlbench.instantiate import instantiate_group
from mtlbench.models.multitask import MultiTaskModel, build_model
from mtlbench.progress import Progress
from mtlbench.strategies.base import GradientStats, SetupContext, Strategy
from mtlbench.tasks import TaskSpec
from mtlbench.tb import RunLogger, flatten_hparams

log = logging.getLogger("mtlbench")


# ----------------------------------------------------------------------------- setup helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """Indices of training batch ``step``: epoch e is a permutation seeded by (seed, e), the last
    partial batch dropped. A pure function of ``step``, so resuming needs no data-order state."""
    per_epoch = max(n // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return perm[i * batch_size:(i + 1) * batch_size]


def task_losses(tasks: list[TaskSpec], outputs: dict[str, Tensor],
                targets: dict[str, Tensor]) -> Tensor:
    """The vector of transformed task losses [n], in task order."""
    return torch.stack([t.loss(outputs[t.name], targets[t.name]) for t in tasks])


def gradient_params(model: MultiTaskModel, source: str) -> list[torch.nn.Parameter]:
    """Parameters over which per-task gradients are taken ([] means the representation)."""
    return {"shared": model.shared_parameters, "last_shared": model.last_shared_parameters,
            "representation": list}[source]()


@torch.no_grad()
def measure_losses(model: MultiTaskModel, data: MultiTaskData, batches: int, batch_size: int,
                   seed: int) -> Tensor:
    """Mean transformed loss per task over ``batches`` training batches (eq. 2, measured)."""
    total = torch.zeros(len(data.tasks), dtype=torch.float64)
    for b in range(batches):
        idx = batch_indices(b, len(data.train), batch_size, seed + 7919)
        idx = idx.to(data.train.inputs.device)
        x, y = data.train.batch(idx)
        total += task_losses(data.tasks, model(x)[1], y).double().cpu()
    return total / batches


# ----------------------------------------------------------------------------- one step
@dataclass
class StepResult:
    """What one step leaves for logging: detached losses [n], effective weights [n], the
    per-task gradient statistics (norms [n], Gramian [n, n]; None for loss-side strategies) and
    whether the step was applied. Only statistics are kept, not the per-task gradients (which would
    double peak memory across steps)."""

    losses: Tensor
    weights: Tensor
    grads: GradientStats | None
    finite: bool


def train_step(model: MultiTaskModel, tasks: list[TaskSpec], x: Tensor, y: dict[str, Tensor],
               strategy: Strategy, optimizer: torch.optim.Optimizer) -> StepResult:
    """Forward, per-task losses, (gradient statistics), strategy weights, backward, optimizer step.

    One backward either way; a gradient-side strategy is asked for its weights inside it, when the
    gradient reaches the shared representation (:func:`mtlbench.gradients.weighted_backward`).
    One host sync: the finiteness check of the losses, weights and gradients (the ``.tolist()`` of
    logging happens only at log steps, in :func:`log_step`).
    """
    optimizer.zero_grad(set_to_none=True)
    stats = None
    if strategy.needs_gradients:
        names, source = [t.name for t in tasks], strategy.gradient_source
        fwd = split_forward(model.backbone, model.heads, x, names, at_last_shared=(
            source == "last_shared" and splits_at_last_shared(model.backbone)))
        losses = task_losses(tasks, fwd.outputs, y)
        weights, grads = weighted_backward(
            losses, fwd, gradient_params(model, source),
            [model.head_parameters(name) for name in names], model.shared_parameters(),
            strategy_weigh(strategy, losses.detach()), covers_shared=source == "shared")
        weights, stats = weights.detach(), grads.stats
    else:
        losses = task_losses(tasks, model(x)[1], y)
        weights = strategy.weights(losses.detach(), None).detach()
        (weights.to(losses.dtype) * losses).sum().backward()
    grad_list = [p.grad for p in model.trainable_parameters() if p.grad is not None]
    # max |g| over all gradients in one fused reduction (no per-parameter sync; no overflow)
    max_grad = torch.nn.utils.get_total_norm(grad_list, math.inf)
    finite = bool(torch.isfinite(losses.detach()).all() & torch.isfinite(weights).all()
                  & torch.isfinite(max_grad))
    if finite:
        optimizer.step()
    return StepResult(losses.detach(), weights, stats, finite)


def strategy_weigh(strategy: Strategy, losses: Tensor) -> Weigh:
    """The strategy's answer to this step's per-task gradients: its weights over their statistics,
    or, for strategies that combine the gradients themselves, weights and shared update."""
    def weigh(grads: TaskGradients) -> tuple[Tensor, list[Tensor] | None]:
        if strategy.combines_gradients:
            return strategy.combine_gradients(losses, grads.per_param)
        return strategy.weights(losses, grads.stats), None
    return weigh


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: MultiTaskModel, tasks: list[TaskSpec], split: Split,
             batch_size: int) -> dict[str, dict[str, float]]:
    """Per task: ``loss`` (transformed training loss) and its metric, averaged over the split."""
    model.eval()
    sums = {t.name: {"loss": 0.0, t.metric: 0.0} for t in tasks}
    n = len(split)
    for lo in range(0, n, batch_size):
        idx = torch.arange(lo, min(lo + batch_size, n), device=split.inputs.device)
        x, y = split.batch(idx)
        outputs = model(x)[1]
        for t in tasks:
            share = len(idx) / n
            sums[t.name]["loss"] += share * float(t.loss(outputs[t.name], y[t.name]))
            sums[t.name][t.metric] += share * float(t.metric_value(outputs[t.name], y[t.name]))
    model.train()
    return sums


# ----------------------------------------------------------------------------- logging
def log_step(logger: RunLogger, tasks: list[TaskSpec], step: int, result: StepResult,
             with_grads: bool) -> None:
    names = [t.name for t in tasks]
    logger.scalars("train/loss", dict(zip(names, result.losses.tolist(), strict=True)), step)
    logger.scalars("train/weight", dict(zip(names, result.weights.tolist(), strict=True)), step)
    if with_grads and result.grads is not None:
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
def run(cfg: DictConfig, run_dir: Path, strategy_name: str, *,
        interactive: bool = False) -> dict[str, Any]:
    """Train one configuration in ``run_dir``; returns the metrics written to ``metrics.json``."""
    validate(cfg)
    tcfg = cfg.trainer
    if tcfg.num_threads > 0:
        torch.set_num_threads(tcfg.num_threads)
    if tcfg.retain_cpu_memory:
        retain_freed_memory()
    seed_everything(cfg.seed)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(tcfg.device)
    data = build_data(cfg.data, cfg.seed).to(device)
    strategy: Strategy = instantiate_group("strategy", cfg.strategy, _convert_="all")
    model = build_model(cfg.model, data.input_shape, data.tasks).to(device)
    optimizer = instantiate_group("optimizer", cfg.optimizer, params=model.parameters())
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, tcfg.lr_decay_every, tcfg.lr_decay)
                 if tcfg.lr_decay_every > 0 else None)
    tasks, names = data.tasks, [t.name for t in data.tasks]
    check_report_metric(tcfg.report_metric, tasks)

    if tcfg.resume == "fresh":
        checkpoint.remove_all(run_dir)
    start, counters = checkpoint.resume(run_dir, model, optimizer, scheduler, strategy)
    if start == 0:
        strategy.setup(SetupContext(
            tasks=tasks,
            train_targets=data.train.targets,
            measure_losses=lambda k: measure_losses(model, data, k, tcfg.batch_size, cfg.seed),
        ))
    else:
        log.info("Resumed from checkpoint at step %d in %s", start, run_dir)

    logger = RunLogger(run_dir, names, purge_step=start or None)
    progress = Progress(tcfg.max_steps, enabled=interactive if tcfg.progress == "auto"
                        else tcfg.progress == "on")
    skipped, started, val = counters.get("skipped_steps", 0), time.perf_counter(), {}
    for step in range(start, tcfg.max_steps):
        idx = batch_indices(step, len(data.train), tcfg.batch_size, cfg.seed).to(device)
        x, y = data.train.batch(idx)
        result = train_step(model, tasks, x, y, strategy, optimizer)
        if not result.finite:
            if tcfg.on_nonfinite == "error":
                raise TrainingDiverged(_divergence_message(step, names, result, strategy_name))
            skipped += 1
            logger.writer.add_scalar("train/skipped_steps", skipped, step)
        if scheduler is not None:
            scheduler.step()
        if step % tcfg.log_every == 0:
            log_step(logger, tasks, step, result, with_grads=step % tcfg.grad_log_every == 0)
        if (step + 1) % tcfg.eval_every == 0 or step + 1 == tcfg.max_steps:
            val = evaluate(model, tasks, data.val, tcfg.eval_batch_size)
            log_eval(logger, "val", val, step + 1)
            progress.clear()
            log.info("step %d/%d  val %s", step + 1, tcfg.max_steps, _brief(tasks, val))
        if tcfg.checkpoint_every and (step + 1) % tcfg.checkpoint_every == 0:
            checkpoint.save(run_dir, step + 1, model, optimizer, scheduler, strategy,
                            keep=tcfg.keep_checkpoints, counters={"skipped_steps": skipped})
        progress.update(step + 1, result.losses)
    progress.close()

    test = evaluate(model, tasks, data.test, tcfg.eval_batch_size)
    log_eval(logger, "test", test, tcfg.max_steps)
    metrics = {
        "strategy": strategy_name,
        "seed": int(cfg.seed),
        "steps": int(tcfg.max_steps),
        "tasks": {t.name: {"kind": t.kind, **test[t.name]} for t in tasks},
        "val": val,
        "skipped_steps": skipped,
        "train_seconds": round(time.perf_counter() - started, 3),
        "device": str(device),
    }
    hp = flatten_hparams(OmegaConf.to_container(cfg, resolve=True))
    hp["strategy"] = strategy_name
    logger.hparams(hp, {f"hparams/test_{t.metric}/{t.name}": test[t.name][t.metric] for t in tasks})
    logger.close()
    write_json_atomic(run_dir / "metrics.json", metrics)
    log.info("Final test metrics (%s, seed %d):\n%s", strategy_name, cfg.seed,
             summary_table(tasks, test))
    return metrics


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
            f"{where}. The last good checkpoint is kept; lower optimizer.lr or set "
            "trainer.on_nonfinite=skip_step.")
