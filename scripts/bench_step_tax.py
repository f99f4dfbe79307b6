"""Per-step tax of the training loop: ``train_step`` with ``equal`` against the floor, a plain
``sum(losses).backward()`` + optimizer step on the same model and batch (interleaved rounds,
medians, paired ratio), and the cost of the finiteness check alone (old ``max |g|`` through
``get_total_norm(·, inf)``, the float64 sums of the previous ``train.all_finite``, and the fused
check it uses now).

    python scripts/bench_step_tax.py [--tasks 2] [--width 256] [--input-dim 784] [--batch 256]
    python scripts/bench_step_tax.py --backbone lenet          # MultiLeNet on 28x28 pairs
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from mtlbench.models.multitask import build_model
from mtlbench.strategies.equal import Equal
from mtlbench.tasks import TaskSpec
from mtlbench.train import all_finite, train_step


def per_call_ms(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--input-dim", type=int, default=784)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbone", choices=("mlp", "lenet"), default="mlp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tasks = [TaskSpec(name=f"t{i}", kind="classification", out_dim=10) for i in range(args.tasks)]
    if args.backbone == "lenet":
        shape: tuple[int, ...] = (1, 28, 28)
        node = {"_target_": "mtlbench.models.lenet.LeNetBackbone", "head_layers": 2,
                "head_hidden": 50}
        label = "MultiLeNet 1x28x28"
    else:
        shape = (args.input_dim,)
        node = {"_target_": "mtlbench.models.mlp.MLPBackbone", "width": args.width,
                "depth": args.depth}
        label = f"MLP {args.input_dim}-{args.width}x{args.depth}"
    model = build_model(node, shape, tasks)
    x = torch.randn(args.batch, *shape)
    y = {t.name: torch.randint(0, 10, (args.batch,)) for t in tasks}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    strategy = Equal()

    def floor() -> None:
        optimizer.zero_grad(set_to_none=True)
        outputs = model(x)[1]
        torch.stack([t.loss(outputs[t.name], y[t.name]) for t in tasks]).sum().backward()
        optimizer.step()

    def mtlbench_equal() -> None:
        train_step(model, tasks, x, y, strategy, optimizer)

    cases = {"floor (sum backward + Adam)": floor, "mtlbench equal": mtlbench_equal}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        per_call_ms(fn, args.steps)  # warm-up
    for _ in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(per_call_ms(fn, args.steps))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    checks = {
        "check: max |g| (get_total_norm inf)": lambda: bool(torch.isfinite(
            torch.nn.utils.get_total_norm(grads, math.inf))),
        "check: float64 sums (previous)": lambda: bool(torch.isfinite(torch.stack(
            [g.sum(dtype=torch.float64) for g in grads]).sum())),
        "check: fused (train.all_finite)": lambda: all_finite(grads),
    }
    print(f"# {label}, batch {args.batch}, n={args.tasks}, "
          f"{args.threads} thread(s), torch {torch.__version__}; median of {args.rounds} "
          f"interleaved rounds x {args.steps} steps")
    floor_ms = times["floor (sum backward + Adam)"]
    for name, values in times.items():
        ratios = [v / f for v, f in zip(values, floor_ms, strict=True)]
        print(f"{name:<40} {statistics.median(values):8.3f} ms   x floor "
              f"{statistics.median(ratios):.3f}")
    for name, fn in checks.items():
        per_call_ms(fn, 20)
        print(f"{name:<40} {statistics.median(per_call_ms(fn, 50) for _ in range(5)):8.3f} ms")


if __name__ == "__main__":
    main()
