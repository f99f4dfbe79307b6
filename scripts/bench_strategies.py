"""Step time (and peak memory) of every strategy on the same model and batch, interleaved.

Every ``conf/strategy/*.yaml`` (loss-side and gradient-side) plus ``gradnorm_ideal`` with each
``params`` option runs ``train_step`` on its own copy of one model (same initial weights, same
batch, Adam). Rounds are interleaved (strategy A, B, C, …, A, B, C, …) so load changes on the
machine hit every strategy alike; the table gives the median ms/step over rounds and the ratio to
``equal``.

Memory (``--memory``): each strategy runs in a fresh subprocess; just before its first step we note
the resident set size and reset the kernel's peak-RSS counter (``/proc/self/clear_refs``), and after
``--steps`` steps report peak RSS (VmHWM) minus that RSS: the extra host memory the steps needed at
their peak (activations, per-task gradients, optimizer state, allocator slack), not a per-tensor
count. Linux, CPU only.

Own cost (``--own-cost``): what each method costs on top of the engine, its decision alone, with no
model and no backward, for n = 2, 4, 10 tasks by default (``--tasks``), 1 thread by default
(``--threads``). Loss side: ``weights(losses)``, plus ``objective(losses).backward()`` when it has
learned ``parameters()``. Gramian side: ``decide(losses, stats)`` on a float64 n x n Gramian of
random gradient rows (as the loop passes it). Combiners: ``combine(losses, PerTaskGradients(...))``
on float32 per-task gradients shaped like the model's shared parameters (default: the MLP above),
with their statistics computed as the loop does (``mtlbench.gradients.gramian``). The inputs are
seeded draws, cycled through a small pool: losses are the model's task losses on the batch times a
random factor exp(0.1 N(0, 1)) per call; gradient rows are s_i (c_i z_0 + z_i) / sqrt(P), with a
fixed per-task scale s_i in [0.1, 10] (log-uniform) and share c_i of a common direction z_0 in
[-0.5, 1] (some task pairs conflict), and fresh Gaussian z per draw. Between calls the loop's
hooks run untimed (``after_step`` after every call, ``end_of_epoch`` every 4 calls), after an
untimed warm-up of at least 6 such epochs, so stateful methods (Nash-MTL's warm start, GradVac's
EMA, DWA's epoch ratios, FAMO's logits, STCH's nadir, ExcessMTL's accumulators) are timed in
steady state; random methods get ``torch.manual_seed`` again before every call (untimed). Every
part of a stacked strategy is set up (``base.parts``); a strategy that refuses the task set
(``single_task`` for n > 1) is left out. Rounds are interleaved as above; the table gives the
median ms per call over all ``--rounds`` x ``--steps`` calls, and its 90th percentile.

    .venv/bin/python scripts/bench_strategies.py                      # MLP 128x2, batch 128, n=2,4
    .venv/bin/python scripts/bench_strategies.py --width 512 --depth 3
    .venv/bin/python scripts/bench_strategies.py --backbone lenet --batch 256
    .venv/bin/python scripts/bench_strategies.py --own-cost           # decision alone, n=2,4,10
    .venv/bin/python scripts/bench_strategies.py --strategies gradnorm_ideal db_mtl  # + equal
    .venv/bin/python scripts/bench_strategies.py --own-cost --tasks 4 16 --rounds 10
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from mtlbench.allocator import retain_freed_memory
from mtlbench.config import register_configs
from mtlbench.errors import ConfigError
from mtlbench.gradients import gramian, stats_from_gramian
from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.strategies.base import (
    Combiner,
    GradientStats,
    GradientWeighting,
    PerTaskGradients,
    SetupContext,
    Strategy,
    parts,
)
from mtlbench.tasks import TaskSpec
from mtlbench.train import task_losses, train_step

STRATEGY_DIR = Path(__file__).resolve().parents[1] / "conf" / "strategy"
EXTRA = {"gradnorm_ideal[last_shared]": ("gradnorm_ideal", {"params": "last_shared"}),
         "gradnorm_ideal[representation]": ("gradnorm_ideal", {"params": "representation"}),
         # the YAML's default γ = 1 is the arithmetic mean (a constant-weight shortcut): time the
         # log-space path too
         "generalized_mean[gamma=0.5]": ("generalized_mean", {"gamma": 0.5})}


#: ``--strategies``: time only the labels containing one of these texts (and ``equal``)
ONLY: list[str] = []


def variants() -> dict[str, tuple[str, dict]]:
    names = {p.stem: (p.stem, {}) for p in sorted(STRATEGY_DIR.glob("*.yaml"))}
    every = {**names, **{k: v for k, v in EXTRA.items() if v[0] in names}}
    return {label: v for label, v in every.items()
            if not ONLY or label == "equal" or any(text in label for text in ONLY)}


@functools.cache
def strategy_node(name: str) -> DictConfig:
    """``strategy=<name>`` composed as ``mtlbench train`` composes it (so a YAML's ``defaults``,
    e.g. ``imtl``'s stacked ``loss_weighting``, are resolved)."""
    register_configs()
    with initialize_config_module(config_module="mtlbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[f"strategy={name}"]).strategy


def make_strategy(name: str, overrides: dict) -> Strategy:
    node = OmegaConf.merge(strategy_node(name), overrides)
    return instantiate(OmegaConf.to_container(node), _convert_="all")


def make_problem(args: argparse.Namespace, n: int):
    """Model, tasks, one batch: n tasks alternating 10-class classification and 3-d regression."""
    torch.manual_seed(0)
    tasks = [TaskSpec(f"t{i}", "classification", 10) if i % 2 == 0
             else TaskSpec(f"t{i}", "regression", 3, loss_scale=10.0 ** i) for i in range(n)]
    if args.backbone == "lenet":
        from mtlbench.models.lenet import LeNetBackbone
        backbone = LeNetBackbone(input_shape=(1, 28, 28))
        x = torch.randn(args.batch, 1, 28, 28)
        head_hidden = 50
    else:
        backbone = MLPBackbone(input_shape=(args.input_dim,), width=args.width, depth=args.depth)
        x = torch.randn(args.batch, args.input_dim)
        head_hidden = 0
    model = MultiTaskModel(backbone, {t.name: make_head(t, backbone.out_dim, head_hidden)
                                      for t in tasks})
    y = {t.name: torch.randint(0, 10, (args.batch,)) if t.is_classification
         else torch.randn(args.batch, 3) for t in tasks}
    return model, tasks, x, y


def prepare(name: str, overrides: dict, model, tasks, x, y):
    """(strategy, its own model copy, Adam) or None when the strategy refuses this task set."""
    try:
        strategy = make_strategy(name, overrides)
        m = copy.deepcopy(model)
        ctx = SetupContext(
            tasks=tasks, train_targets=y,
            measure_losses=lambda k: task_losses(tasks, m(x)[1], y).detach().double())
        for part in parts(strategy):  # a stacked loss weighting too
            part.setup(ctx)
    except (ConfigError, ValueError, KeyError):
        return None
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    for part in parts(strategy):  # learned strategy parameters, as mtlbench.train trains them
        if part.parameters():
            opt.add_param_group({"params": part.parameters(), "weight_decay": 0.0,
                                 **({"lr": part.lr} if part.lr is not None else {})})
    return strategy, m, opt


def bench_times(args: argparse.Namespace, n: int) -> dict[str, float]:
    model, tasks, x, y = make_problem(args, n)
    cases = {}
    for label, (name, overrides) in variants().items():
        prepared = prepare(name, overrides, model, tasks, x, y)
        if prepared is not None:
            cases[label] = prepared
    times: dict[str, list[float]] = {k: [] for k in cases}
    for rnd in range(args.rounds + 1):
        for label, (strategy, m, opt) in cases.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(m, tasks, x, y, strategy, opt)
            if rnd:  # round 0 warms up
                times[label].append((time.perf_counter() - start) / args.steps * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def child_memory(args: argparse.Namespace, n: int, label: str) -> None:
    name, overrides = variants()[label]
    model, tasks, x, y = make_problem(args, n)
    prepared = prepare(name, overrides, model, tasks, x, y)
    if prepared is None:
        print(json.dumps(None))
        return
    strategy, m, opt = prepared
    del model
    before = proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    for _ in range(args.steps):
        train_step(m, tasks, x, y, strategy, opt)
    print(json.dumps((proc_status("VmHWM") - before) / 1024))


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def bench_memory(args: argparse.Namespace, n: int) -> dict[str, float | None]:
    out = {}
    for label in variants():
        cmd = [sys.executable, __file__, "--child", label, "--tasks", str(n), "--steps",
               str(args.steps), "--backbone", args.backbone, "--width", str(args.width),
               "--depth", str(args.depth), "--batch", str(args.batch), "--input-dim",
               str(args.input_dim), "--threads", str(args.threads),
               *(["--release-memory"] if args.release_memory else [])]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------- own cost
#: Calls per simulated epoch (``end_of_epoch`` after every ``OWN_EPOCH`` calls).
OWN_EPOCH = 4
#: Untimed warm-up epochs at least (DWA needs 2 epoch means; STCH its ``warmup_epoch`` + 1).
OWN_WARMUP_EPOCHS = 6
#: Distinct seeded inputs per n, cycled through.
OWN_POOL = 8


@dataclass
class OwnInput:
    """One call's inputs: losses [n] (float32, detached), the Gramian side's statistics (float64)
    and the combiners' per-task gradients (float32, with the loop's statistics)."""

    losses: Tensor
    stats: GradientStats
    grads: PerTaskGradients


def own_inputs(args: argparse.Namespace, n: int, model, tasks, x, y) -> list[OwnInput]:
    """``OWN_POOL`` seeded inputs (see the module docstring)."""
    with torch.no_grad():
        base = task_losses(tasks, model(x)[1], y).detach().double()
    shapes = [p.shape for p in model.shared_parameters()]
    sizes = [math.prod(shape) for shape in shapes]
    size = sum(sizes)
    gen = torch.Generator().manual_seed(1000 + n)
    scales = 10.0 ** (2 * torch.rand(n, 1, generator=gen) - 1)  # s_i in [0.1, 10]
    shares = 1.5 * torch.rand(n, 1, generator=gen) - 0.5  # c_i in [-0.5, 1]
    pool = []
    for _ in range(OWN_POOL):
        factor = torch.exp(0.1 * torch.randn(n, generator=gen, dtype=torch.float64))
        losses = (base * factor).float()
        common = torch.randn(1, size, generator=gen)
        rows = scales * (shares * common + torch.randn(n, size, generator=gen)) / math.sqrt(size)
        per_param = [chunk.reshape(n, *shape).contiguous()
                     for chunk, shape in zip(rows.split(sizes, dim=1), shapes, strict=True)]
        wide_rows = rows.double()
        gram = wide_rows @ wide_rows.T
        pool.append(OwnInput(losses, GradientStats(gram.diagonal().clamp_min(0).sqrt(), gram),
                             PerTaskGradients(per_param, stats_from_gramian(gramian(per_param)))))
    return pool


class OwnCase:
    """One strategy fed the pool's inputs call after call, with the loop's hooks in between."""

    def __init__(self, strategy: Strategy, pool: list[OwnInput]) -> None:
        self.strategy, self.pool, self.calls = strategy, pool, 0
        self.parts = parts(strategy)
        self.random = not all(part.deterministic for part in self.parts)
        self.learned = [p for part in self.parts for p in part.parameters()]
        self.objective = strategy.kind == "loss" and bool(strategy.parameters())
        self.stacked = [part for part in self.parts[1:] if part.parameters()]

    def decide(self, inp: OwnInput, leaf: Tensor | None) -> Tensor:
        """The strategy's decision for one call (what is timed); returns its weights [n]."""
        strategy = self.strategy
        if isinstance(strategy, Combiner):
            return strategy.combine(inp.losses, inp.grads).weights
        if isinstance(strategy, GradientWeighting):
            weights = strategy.decide(inp.losses, inp.stats)[0]
            for part in self.stacked:
                part.objective(inp.losses).backward()
            return weights
        weights = strategy.weights(inp.losses, None)
        if leaf is not None:
            strategy.objective(leaf).backward()
        return weights

    def step(self) -> tuple[float, bool]:
        """One timed call and the untimed hooks after it: (ms, whether the weights are finite)."""
        inp = self.pool[self.calls % len(self.pool)]
        leaf = inp.losses.clone().requires_grad_(True) if self.objective else None
        if self.random:
            torch.manual_seed(self.calls)
        start = time.perf_counter()
        weights = self.decide(inp, leaf)
        ms = (time.perf_counter() - start) * 1e3
        for p in self.learned:  # the loop's optimizer.zero_grad
            p.grad = None
        for part in self.parts:
            part.after_step(inp.losses)
            if (self.calls + 1) % OWN_EPOCH == 0:
                part.end_of_epoch(self.calls // OWN_EPOCH)
        self.calls += 1
        return ms, bool(torch.isfinite(weights).all())


def own_case(name: str, overrides: dict, model, tasks, x, y,
             pool: list[OwnInput]) -> OwnCase | None:
    """The strategy with every part set up, or None when it refuses this task set."""
    try:
        strategy = make_strategy(name, overrides)
        ctx = SetupContext(
            tasks=tasks, train_targets=y,
            measure_losses=lambda k: task_losses(tasks, model(x)[1], y).detach().double())
        for part in parts(strategy):
            part.setup(ctx)
    except (ConfigError, ValueError, KeyError):
        return None
    return OwnCase(strategy, pool)


def bench_own_cost(args: argparse.Namespace, n: int) -> dict[str, tuple[str, float, float]]:
    """Per variant: (kind, median ms per call, 90th percentile ms), rounds interleaved."""
    model, tasks, x, y = make_problem(args, n)
    pool = own_inputs(args, n, model, tasks, x, y)
    cases = {}
    for label, (name, overrides) in variants().items():
        case = own_case(name, overrides, model, tasks, x, y, pool)
        if case is not None:
            cases[label] = case
    for label, case in cases.items():
        warmup = max(OWN_WARMUP_EPOCHS, *(getattr(p, "warmup_epoch", 0) + 2 for p in case.parts))
        finite = [case.step()[1] for _ in range(warmup * OWN_EPOCH)]
        if not all(finite):
            print(f"warning: {label} (n={n}) gave non-finite weights in the warm-up",
                  file=sys.stderr)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for label, case in cases.items():
            for _ in range(args.steps):
                times[label].append(case.step()[0])
    return {k: (cases[k].strategy.kind, statistics.median(v),
                statistics.quantiles(v, n=10, method="inclusive")[-1] if len(v) > 1 else v[0])
            for k, v in times.items()}


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (Linux), else ``unknown CPU``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``a/b/c``."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def own_cost(args: argparse.Namespace, desc: str) -> None:
    """Run ``bench_own_cost`` for every n and print the header line and the markdown table."""
    load_start = load_average()
    results = {}
    for n in args.tasks:
        start = time.perf_counter()
        results[n] = bench_own_cost(args, n)
        print(f"n = {n}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    print(f"# own cost per call: {cpu_model()}, {cores} cores ({usable} usable), "
          f"torch {torch.__version__}, torch threads {args.threads}, load average (1/5/15 min) "
          f"{load_start} at start, {load_average()} at end")
    model = make_problem(args, 2)[0]
    shared = sum(p.numel() for p in model.shared_parameters())
    print(f"# median (p90) ms per call of the decision alone over {args.rounds} interleaved rounds "
          f"x {args.steps} calls; combiners on the shared parameters of {desc} ({shared} "
          f"parameters); '-': refuses that n")
    labels = list(dict.fromkeys(k for n in args.tasks for k in results[n]))
    kinds = {k: r[k][0] for r in results.values() for k in r}
    cols = [f"n={n} (ms)" for n in args.tasks]
    width = 17
    print(f"| {'strategy':<32} | {'kind':<8} | " + " | ".join(f"{c:>{width}}" for c in cols)
          + " |")
    print(f"|{'-' * 34}|{'-' * 10}|" + "|".join("-" * (width + 1) + ":" for _ in cols) + "|")
    for label in labels:
        cells = []
        for n in args.tasks:
            r = results[n].get(label)
            cells.append(f"{r[1]:.3f} ({r[2]:.3f})" if r else "-")
        print(f"| {label:<32} | {kinds[label]:<8} | "
              + " | ".join(f"{c:>{width}}" for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+",
                        help="task counts (default 2 4; 2 4 10 with --own-cost)")
    parser.add_argument("--backbone", choices=("mlp", "lenet"), default="mlp")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--input-dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per strategy per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch threads (default 2; 1 with --own-cost)")
    parser.add_argument("--memory", action="store_true", help="also peak-RSS per strategy")
    parser.add_argument("--own-cost", action="store_true",
                        help="time each strategy's decision alone, no model and no backward "
                             "(--steps: calls per strategy per round)")
    parser.add_argument("--release-memory", action="store_true",
                        help="keep glibc's default of returning freed memory to the OS (the "
                             "training loop retains it: trainer.retain_cpu_memory=true)")
    parser.add_argument("--strategies", nargs="+", default=[], metavar="TEXT",
                        help="time only the strategies whose label contains one of these texts "
                             "(and equal, the reference)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ONLY[:] = [] if args.child else args.strategies
    if args.own_cost and args.memory:
        parser.error("--own-cost measures no memory: drop --memory")
    if args.tasks is None:
        args.tasks = [2, 4, 10] if args.own_cost else [2, 4]
    if args.threads is None:
        args.threads = 1 if args.own_cost else 2
    torch.set_num_threads(args.threads)
    retained = False if args.release_memory else retain_freed_memory()
    if args.child:
        child_memory(args, args.tasks[0], args.child)
        return
    desc = ("lenet (MultiLeNet, 1x28x28)" if args.backbone == "lenet"
            else f"mlp width {args.width} depth {args.depth} input {args.input_dim}")
    if args.own_cost:
        own_cost(args, desc)
        return
    print(f"# {desc}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}, "
          f"median of {args.rounds} interleaved rounds x {args.steps} steps, "
          f"freed memory {'retained' if retained else 'released'}")
    for n in args.tasks:
        times = bench_times(args, n)
        memory = bench_memory(args, n) if args.memory else {}
        base = times["equal"]
        floor = (1 + 2 * n) / 3
        print(f"\n## n = {n} tasks  (gradnorm_ideal[shared] target <= (1+2n)/3 = {floor:.2f}x)")
        print(f"| {'strategy':<32} | {'ms/step':>8} | {'x equal':>7} |"
              + (f" {'peak RSS +MiB':>13} |" if memory else ""))
        print(f"|{'-' * 34}|{'-' * 10}|{'-' * 9}|" + (f"{'-' * 15}|" if memory else ""))
        for label, ms in times.items():
            mem = memory.get(label)
            print(f"| {label:<32} | {ms:8.3f} | {ms / base:7.2f} |"
                  + ((f" {mem:13.1f} |" if mem is not None else f" {'-':>13} |") if memory
                     else ""))


if __name__ == "__main__":
    main()
