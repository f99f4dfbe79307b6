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

    .venv/bin/python scripts/bench_strategies.py                      # MLP 128x2, batch 128, n=2,4
    .venv/bin/python scripts/bench_strategies.py --width 512 --depth 3
    .venv/bin/python scripts/bench_strategies.py --backbone lenet --batch 256
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtlbench.allocator import retain_freed_memory
from mtlbench.errors import ConfigError
from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.strategies.base import SetupContext, Strategy
from mtlbench.tasks import TaskSpec
from mtlbench.train import task_losses, train_step

STRATEGY_DIR = Path(__file__).resolve().parents[1] / "conf" / "strategy"
EXTRA = {"gradnorm_ideal[last_shared]": ("gradnorm_ideal", {"params": "last_shared"}),
         "gradnorm_ideal[representation]": ("gradnorm_ideal", {"params": "representation"}),
         # the YAML's default γ = 1 is the arithmetic mean (a constant-weight shortcut): time the
         # log-space path too
         "generalized_mean[gamma=0.5]": ("generalized_mean", {"gamma": 0.5})}


def variants() -> dict[str, tuple[str, dict]]:
    names = {p.stem: (p.stem, {}) for p in sorted(STRATEGY_DIR.glob("*.yaml"))}
    return {**names, **{k: v for k, v in EXTRA.items() if v[0] in names}}


def make_strategy(name: str, overrides: dict) -> Strategy:
    node = OmegaConf.load(STRATEGY_DIR / f"{name}.yaml")
    node = OmegaConf.merge(node, overrides)
    return instantiate(node, _convert_="all")


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
        strategy.setup(SetupContext(
            tasks=tasks, train_targets=y,
            measure_losses=lambda k: task_losses(tasks, m(x)[1], y).detach().double()))
    except (ConfigError, ValueError, KeyError):
        return None
    return strategy, m, torch.optim.Adam(m.parameters(), lr=1e-4)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--backbone", choices=("mlp", "lenet"), default="mlp")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--input-dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per strategy per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="also peak-RSS per strategy")
    parser.add_argument("--release-memory", action="store_true",
                        help="keep glibc's default of returning freed memory to the OS (the "
                             "training loop retains it: trainer.retain_cpu_memory=true)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retained = False if args.release_memory else retain_freed_memory()
    if args.child:
        child_memory(args, args.tasks[0], args.child)
        return
    desc = ("lenet (MultiLeNet, 1x28x28)" if args.backbone == "lenet"
            else f"mlp width {args.width} depth {args.depth} input {args.input_dim}")
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
