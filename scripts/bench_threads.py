"""ms/step of a training step under thread settings, idle and next to busy processes, interleaved.

Each setting (thread count + OpenMP environment, which must be set before torch is imported) gets
one long-lived worker process. The parent asks the workers for a burst of steps in rotation, round
by round (the first setting of a round rotates too), so load changes on the machine hit every
setting alike; round 0 of each load warms up and is dropped. A burst runs ``--steps`` steps or
stops after ``--burst`` seconds, whichever comes first (a setting that falls off the cliff must not
eat the time budget), and reports its mean ms/step. The table gives, per load and model, the
median and the min over rounds and the ratio of the medians to ``1 thread``.

Models, as ``mtlbench train`` runs them (``train.batch_indices`` → ``Split.batch`` →
``train.train_step``, strategy ``equal``, Adam 1e-3, freed memory retained):
  mlp    the default run: data=synthetic (4 tasks, 32 inputs), MLP 128×2, batch 128
  lenet  MultiLeNet on 1×28×28 random images, MultiMNIST's 3 tasks (left, right, sum), batch 256

Loads: ``idle`` (nothing of ours but the worker asked: the others are stopped with SIGSTOP between
their bursts, so OpenMP threads left spinning after a burst cannot slow the next setting down),
``busyK`` (K processes spinning ``while True: pass``, started for that load and killed after it),
``pair`` (a second worker of the same setting trains at the same time: a 2-job parallel sweep; the
mean of the two bursts is reported). The header reports, per load, the CPU cores that other
processes (not this benchmark's) used meanwhile, from /proc: on a shared machine ``idle`` is idle
only when that is near 0.

``--progress`` instead times ``mtlbench.progress.Progress`` on the MLP step: disabled vs. enabled
(writing to /dev/null; 10 redraws a second), interleaved, in this process.

    .venv/bin/python scripts/bench_threads.py         # ~2 min: 5 settings; idle, busy1, pair
    .venv/bin/python scripts/bench_threads.py --loads idle busy1 busy2 --rounds 15
    .venv/bin/python scripts/bench_threads.py --settings 1 2 2-passive --models lenet
    .venv/bin/python scripts/bench_threads.py --progress
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: label → (torch.set_num_threads argument (0: leave torch's default; "auto": mtlbench.threads),
#: environment set before torch is imported)
SETTINGS: dict[str, tuple[int | str, dict[str, str]]] = {
    "1": (1, {}),
    "2": (2, {}),
    "2-passive": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2-spin10k": (2, {"GOMP_SPINCOUNT": "10000"}),
    "2-spin1k": (2, {"GOMP_SPINCOUNT": "1000"}),
    "2-active": (2, {"OMP_WAIT_POLICY": "ACTIVE"}),
    "auto": ("auto", {}),
}
DEFAULT_SETTINGS = ["1", "2", "2-passive", "2-spin1k", "auto"]
#: variables that would leak the caller's settings into every worker
CLEARED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
           "KMP_BLOCKTIME", "OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY",
           "OMP_DYNAMIC", "MKL_DYNAMIC")


# ----------------------------------------------------------------------------- worker side
def make_problems() -> dict:
    """model name → a function running one training step (as the loop does)."""
    import torch
    from hydra import compose, initialize_config_module

    from mtlbench.config import register_configs
    from mtlbench.data import Split, build_data
    from mtlbench.models.multitask import build_model
    from mtlbench.strategies.equal import Equal
    from mtlbench.tasks import TaskSpec
    from mtlbench.train import batch_indices, train_step

    register_configs()
    with initialize_config_module(config_module="mtlbench.conf", version_base="1.3"):
        cfg = compose(config_name="config")
    problems = {}

    def stepper(model, tasks, split: Split, batch: int, seed: int):
        strategy, opt = Equal(), torch.optim.Adam(model.parameters(), lr=1e-3)
        state = {"step": 0}

        def step() -> None:
            idx = batch_indices(state["step"], len(split), batch, seed)
            x, y = split.batch(idx)
            train_step(model, tasks, x, y, strategy, opt)
            state["step"] += 1
        return step

    torch.manual_seed(0)
    data = build_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.tasks)
    problems["mlp"] = stepper(model, data.tasks, data.train, int(cfg.trainer.batch_size),
                              int(cfg.seed))

    tasks = [TaskSpec("left", "classification", 10), TaskSpec("right", "classification", 10),
             TaskSpec("sum", "regression", 1)]
    n = 4096
    split = Split(torch.randn(n, 1, 28, 28), {"left": torch.randint(0, 10, (n,)),
                                               "right": torch.randint(0, 10, (n,)),
                                               "sum": torch.randn(n, 1)})
    lenet = build_model({"_target_": "mtlbench.models.lenet.LeNetBackbone", "head_hidden": 50},
                        (1, 28, 28), tasks)
    problems["lenet"] = stepper(lenet, tasks, split, 256, 0)
    return problems


def worker(threads: str) -> None:
    """Answer ``<model> <steps> <seconds>`` lines with the burst's mean ms/step (JSON)."""
    if threads == "auto":
        from mtlbench.threads import prepare_process_env

        prepare_process_env()
    import torch

    from mtlbench.allocator import retain_freed_memory

    retain_freed_memory()
    if threads == "auto":
        from mtlbench.threads import apply_num_threads

        apply_num_threads(0)
    elif int(threads) > 0:
        torch.set_num_threads(int(threads))
    problems = make_problems()
    for step in problems.values():
        for _ in range(5):
            step()
    env_now = {k: os.environ[k] for k in CLEARED if k in os.environ}
    print(json.dumps({"threads": torch.get_num_threads(), "env": env_now,
                      "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        name, steps, seconds = line.split()
        step, limit, budget = problems[name], int(steps), float(seconds)
        done, start = 0, time.perf_counter()
        while done < limit:
            step()
            done += 1
            if done >= 2 and time.perf_counter() - start > budget:
                break
        elapsed = time.perf_counter() - start
        print(json.dumps({"ms": elapsed / done * 1e3, "steps": done}), flush=True)


# ----------------------------------------------------------------------------- parent side
class Worker:
    def __init__(self, label: str) -> None:
        threads, extra = SETTINGS[label]
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        env.update(extra)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(threads)], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.hello: dict | None = None

    def ready(self) -> dict:
        """The worker's first line (thread count, environment); the worker is stopped after."""
        if self.hello is None:
            self.hello = json.loads(self.proc.stdout.readline())
            os.kill(self.proc.pid, signal.SIGSTOP)
        return self.hello

    def send(self, model: str, steps: int, seconds: float) -> None:
        """Start a burst (resuming the stopped process first)."""
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.stdin.write(f"{model} {steps} {seconds}\n")
        self.proc.stdin.flush()

    def receive(self) -> float:
        """The burst's ms/step; then stop the process (SIGSTOP), so that its OpenMP threads,
        which may go on spinning after the burst (forever with OMP_WAIT_POLICY=ACTIVE), take no
        CPU from the next setting's burst."""
        ms = json.loads(self.proc.stdout.readline())["ms"]
        os.kill(self.proc.pid, signal.SIGSTOP)
        return ms

    def close(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_spinners(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def cpu_seconds(pids: list[int]) -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of ``pids``) from /proc (Linux)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
        ours = 0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            rest = stat[stat.rindex(")") + 2:].split()
            ours += int(rest[11]) + int(rest[12])  # utime, stime
        return busy / tick, ours / tick
    except (OSError, ValueError, IndexError):
        return None


def load_count(load: str) -> int:
    """Number of spinning processes for ``load`` (``pair`` has none: a twin run instead)."""
    if load in ("idle", "pair"):
        return 0
    if load.startswith("busy") and load[4:].isdigit():
        return int(load[4:])
    raise SystemExit(f"unknown load {load!r}: idle, busyK or pair")


def run_bench(args: argparse.Namespace) -> None:
    for load in args.loads:
        load_count(load)
    workers = [Worker(label) for label in args.settings]
    # pair: a second worker of the same setting trains at the same time (a 2-job parallel sweep)
    twins = {w.label: Worker(w.label) for w in workers} if "pair" in args.loads else {}
    spinners: list[subprocess.Popen] = []
    results: dict[tuple[str, str, str], list[float]] = {}
    others: dict[str, float] = {}  # load → CPU cores used by processes not ours, on average
    started = time.perf_counter()
    try:
        hellos = {w.label: w.ready() for w in workers}
        for twin in twins.values():
            twin.ready()
        print(f"# torch {next(iter(hellos.values()))['torch']}, {os.cpu_count()} CPUs, "
              f"loadavg at start {os.getloadavg()[0]:.2f}; bursts of {args.steps} steps or "
              f"{args.burst} s, {args.rounds} rounds (+1 warm-up) per load")
        for w in workers:
            print(f"#   {w.label:<10} torch threads {hellos[w.label]['threads']}, env "
                  f"{hellos[w.label]['env'] or '{}'}")
        for load in args.loads:
            spinners = start_spinners(load_count(load))
            time.sleep(0.3)
            pids = [os.getpid(), *(w.proc.pid for w in [*workers, *twins.values()]),
                    *(p.pid for p in spinners)]
            before, t0 = cpu_seconds(pids), time.perf_counter()
            for rnd in range(args.rounds + 1):
                shift = rnd % len(workers)
                for w in workers[shift:] + workers[:shift]:
                    for model in args.models:
                        both = [w, twins[w.label]] if load == "pair" else [w]
                        for x in both:
                            x.send(model, args.steps, args.burst)
                        ms = statistics.mean([x.receive() for x in both])
                        if rnd:
                            results.setdefault((load, model, w.label), []).append(ms)
            after, wall = cpu_seconds(pids), time.perf_counter() - t0
            if before and after:
                others[load] = max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)
            stop(spinners)
            spinners = []
    finally:
        stop(spinners)
        for w in [*workers, *twins.values()]:
            w.close()
    print(f"# {time.perf_counter() - started:.0f} s; CPU cores used by other processes (not this "
          "benchmark's), on average: "
          + ", ".join(f"{load} {others[load]:.2f}" for load in args.loads if load in others)
          + "\n")
    print(f"| {'load':<6} | {'model':<5} | {'setting':<10} | {'median ms':>9} | {'min ms':>7} | "
          f"{'x 1 thread':>10} |")
    print(f"|{'-' * 8}|{'-' * 7}|{'-' * 12}|{'-' * 11}|{'-' * 9}|{'-' * 12}|")
    for load in args.loads:
        for model in args.models:
            base = statistics.median(results.get((load, model, "1"), [float("nan")]))
            for label in args.settings:
                v = results[(load, model, label)]
                med = statistics.median(v)
                print(f"| {load:<6} | {model:<5} | {label:<10} | {med:9.2f} | {min(v):7.2f} | "
                      f"{med / base:10.2f} |")


# ----------------------------------------------------------------------------- progress bar
def run_progress(args: argparse.Namespace) -> None:
    """ms/step of the MLP step with the bar disabled vs. enabled (to /dev/null), interleaved."""
    import torch

    from mtlbench.allocator import retain_freed_memory
    from mtlbench.progress import Progress

    retain_freed_memory()
    torch.set_num_threads(1)
    step = make_problems()["mlp"]
    losses = torch.tensor([0.5, 1.0, 2.0, 3.0])
    names = ["cls_k2", "cls_k10", "reg_x1", "reg_x100"]
    total = 10**9
    results: dict[str, list[float]] = {"off": [], "on": [], "update only, off": [],
                                       "update only, on": []}
    with open(os.devnull, "w") as sink:
        bars = {"off": Progress(total, enabled=False, names=names),
                "on": Progress(total, enabled=True, names=names, file=sink)}
        counters = {"off": 0, "on": 0}
        for rnd in range(args.rounds + 1):
            for key, bar in bars.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                    counters[key] += 1
                    bar.update(counters[key], losses)
                if rnd:
                    results[key].append((time.perf_counter() - start) / args.steps * 1e3)
                # the bar's own cost, without the step (many calls: µs resolution)
                start = time.perf_counter()
                for _ in range(10_000):
                    counters[key] += 1
                    bar.update(counters[key], losses)
                if rnd:
                    results[f"update only, {key}"].append((time.perf_counter() - start) / 10)
        # one redraw (format + write + reading a 4-element CPU tensor), forced at every call
        import mtlbench.progress as progress_module

        interval, progress_module.REDRAW_INTERVAL = progress_module.REDRAW_INTERVAL, 0.0
        bars["on"]._next_draw = -float("inf")
        start = time.perf_counter()
        for _ in range(2000):
            counters["on"] += 1
            bars["on"].update(counters["on"], losses)
        redraw_us = (time.perf_counter() - start) / 2000 * 1e6
        progress_module.REDRAW_INTERVAL = interval
        for bar in bars.values():
            bar.close()
    print(f"# MLP step (default run), 1 thread, {args.rounds} interleaved rounds x {args.steps} "
          f"steps; update-only: 10,000 calls per round")
    base = statistics.median(results["off"])
    for key in ("off", "on"):
        med = statistics.median(results[key])
        print(f"  step + bar {key:<4}: median {med:.3f} ms/step (x {med / base:.3f}), min "
              f"{min(results[key]):.3f}")
    for key in ("update only, off", "update only, on"):
        print(f"  {key:<17}: median {statistics.median(results[key]) * 1e3:.2f} µs/call")
    print(f"  one redraw       : {redraw_us:.1f} µs (at most 10 a second: "
          f"{redraw_us * 10 / 1e6 * 100:.3f} % of the time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=SETTINGS)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"],
                        choices=("mlp", "lenet"))
    parser.add_argument("--loads", nargs="+", default=["idle", "busy1", "pair"],
                        help="idle, busyK (K spinning processes), pair (2 runs at once)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40, help="steps per burst at most")
    parser.add_argument("--burst", type=float, default=0.25, help="seconds per burst at most")
    parser.add_argument("--progress", action="store_true", help="time the progress bar instead")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
    elif args.progress:
        run_progress(args)
    else:
        run_bench(args)


if __name__ == "__main__":
    main()
