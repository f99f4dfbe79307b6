"""Wall time of one 16-job sweep: Hydra's basic launcher vs. joblib (parallel local processes).

    .venv/bin/python scripts/bench_launchers.py [--repeats 2] [--steps 100] [--n-jobs 2]

Cases are interleaved (basic, basic1, joblib, basic, ...) and the median of each is reported, with
the speed-ups. ``basic``: one job at a time, torch's default threads (= cores); ``basic1``: one job
at a time, trainer.num_threads=1; ``joblib``: n_jobs processes, trainer.num_threads=1 each.
Outputs go to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = ["strategy=equal,realtime,geometric,init_loss", "seed=0,1,2,3"]  # 16 jobs


def sweep_args(steps: int) -> list[str]:
    """A 16-job sweep on small synthetic data."""
    return ["train", "-m", *SWEEP, f"trainer.max_steps={steps}", "trainer.eval_every=50",
            "trainer.batch_size=64", "data.n_train=2048", "data.n_val=256", "data.n_test=256",
            "trainer.device=cpu", "trainer.progress=off"]


def run_case(launcher: str, steps: int, n_jobs: int, out: Path) -> float:
    """Seconds for the whole sweep (process start to exit) with ``launcher``."""
    extra = {"basic": [], "basic1": ["trainer.num_threads=1"],
             "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
                        "trainer.num_threads=1"]}[launcher]
    cmd = [sys.executable, "-m", "mtlbench.cli", *sweep_args(steps), *extra,
           f"hydra.sweep.dir={out}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    finished = len(list(out.glob("*/metrics.json")))
    if finished != 16:
        raise SystemExit(f"{launcher} sweep wrote {finished} metrics.json, expected 16")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cases", default="basic,basic1,joblib",
                        help="comma-separated subset of basic, basic1, joblib")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in args.cases.split(",")}
    with tempfile.TemporaryDirectory(prefix="mtlbench-bench-") as tmp:
        for repeat in range(args.repeats):
            for launcher in times:
                seconds = run_case(launcher, args.steps, args.n_jobs,
                                   Path(tmp) / f"{launcher}-{repeat}")
                times[launcher].append(seconds)
                print(f"repeat {repeat}  {launcher:<6} {seconds:7.1f} s", flush=True)
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n16 jobs x {args.steps} steps, {os.cpu_count()} CPU cores, n_jobs={args.n_jobs}")
    for name, seconds in med.items():
        print(f"median {name:<7} {seconds:7.1f} s")
    for base in ("basic", "basic1"):
        if base in med and "joblib" in med:
            print(f"speed-up joblib vs {base:<6} {med[base] / med['joblib']:5.2f}x")


if __name__ == "__main__":
    main()
