"""CPU threads: one intra-op thread by default, and OpenMP threads that sleep instead of spinning.

Two calls, made by the CLI and the training loop:

- :func:`prepare_process_env` runs first thing in ``mtlbench.cli.main``, before torch is imported
  (the OpenMP runtime reads its environment once, when torch loads it). It sets
  ``OMP_WAIT_POLICY=PASSIVE`` unless the user set one of :data:`WAIT_VARIABLES`:
  idle OpenMP threads then sleep at once instead of spinning (libgomp's default spins ~300,000
  iterations after every parallel region, milliseconds of a core per tiny op). Child processes
  (Hydra's launchers) inherit it.
- :func:`apply_num_threads` runs at the start of each training run with ``trainer.num_threads``:
  ``N > 0`` uses N threads; ``0`` (automatic) uses 1 thread, or the count the user stated in
  ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (which torch read at import). It returns the count in
  effect, which the loop logs and writes to ``metrics.json``: the thread count changes the floating
  point summation order (1 vs. 2 threads: parameters differ by ~3e-8 (MLP) and ~3e-7 (LeNet) after
  30 steps), so results state it, and the automatic choice does not depend on the machine's core
  count or load.

Why 1 thread and not the cores, measured with ``scripts/bench_threads.py`` (2-core shared KVM box,
AMD EPYC, torch 2.14.1+cu130 on libgomp; one worker process per setting, 8 interleaved rounds;
median ms per training step, in brackets the ratio to 1 thread; "+x" = CPU cores that other
people's processes used meanwhile, measured by the script from /proc):

=================  ==============  ===============  ===============  ==================
setting            idle (+0.0)     1 busy (+0.8)    2 busy (+0.6)    2-job sweep (+0.1)
=================  ==============  ===============  ===============  ==================
MLP   1 thread     1.04            2.51             2.54             1.08
MLP   2            1.01 (0.97)     316 (126)        64.2 (25)        6.08 (5.6)
MLP   2 PASSIVE    2.86 (2.76)     2.82 (1.12)      4.04 (1.59)      1.55 (1.44)
MLP   2 SPIN=1000  1.23 (1.19)     6.52 (2.60)      4.47 (1.76)      3.49 (3.24)
MLP   auto         1.05 (1.01)     2.37 (0.95)      2.66 (1.05)      1.08 (1.00)
LeNet 1 thread     20.8            45.4             33.1             22.2
LeNet 2            12.2 (0.58)     814 (17.9)       326 (9.8)        61.9 (2.79)
LeNet 2 PASSIVE    15.3 (0.74)     47.9 (1.06)      41.8 (1.26)      28.2 (1.27)
LeNet 2 SPIN=1000  12.9 (0.62)     44.9 (0.99)      41.3 (1.25)      31.7 (1.43)
LeNet auto         20.7 (0.99)     40.5 (0.89)      38.8 (1.17)      22.0 (0.99)
=================  ==============  ===============  ===============  ==================

MLP: the default run (data=synthetic, 4 tasks, MLP 128x2, batch 128); LeNet: MultiLeNet on
1x28x28, 3 tasks, batch 256. "busy" = processes spinning ``while True: pass``; "2-job sweep" = two
runs of the same setting at once; "2" = torch's default (2 threads on 2 cores, libgomp spinning
300,000 times after each parallel region); "SPIN" = GOMP_SPINCOUNT; "auto" = this module (1
thread, PASSIVE). The box is shared and repeat runs vary a lot under load (2 threads with one busy
process: 1.8x to 126x on the MLP; 2 PASSIVE: 1.1x to 1.8x), but the order does not change.

The MLP (the default run) gains nothing from a second thread even on an idle machine; LeNet
runs 1.7x faster idle. Under contention the default spinning policy falls off the cliff (5-126x;
the issue's 23.6-226 s against 2.7-4.2 s), and no two-thread setting stays within 15 % of one
thread in every case (PASSIVE: 1.27-1.44x in the 2-job sweep, 2.8x on the idle MLP). Choosing by
the load at start would make results depend on the load (the thread count changes the numbers)
and still meet the cliff when the load arrives later. So the automatic choice is 1 thread: within
noise of 1 thread everywhere (0.89-1.17) and the same numbers on any machine. To use the cores: a
parallel sweep (``hydra/launcher=local_parallel``: one 1-thread job per core), or
``trainer.num_threads=2`` for a single large run (LeNet 0.74x with PASSIVE; with
``OMP_WAIT_POLICY=ACTIVE`` exported too, 0.58x on a machine that stays free, and the cliff if
it does not).
"""

from __future__ import annotations

import os

#: What :func:`prepare_process_env` sets when the user set none of :data:`WAIT_VARIABLES`.
DEFAULT_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
#: Variables by which the user chooses the OpenMP wait behaviour (libgomp reads GOMP_SPINCOUNT
#: before OMP_WAIT_POLICY; KMP_BLOCKTIME is Intel's/LLVM's runtime).
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: Variables by which the user states a thread count that torch adopts at import.
COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: The automatic thread count (``trainer.num_threads=0``) when no COUNT_VARIABLES is set.
AUTO_THREADS = 1


def prepare_process_env() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``os.environ`` unless the user chose a wait behaviour.

    Must run before torch is imported to take effect in this process (it never imports torch);
    child processes started afterwards inherit it either way.
    """
    if any(os.environ.get(name) for name in WAIT_VARIABLES):
        return
    for name, value in DEFAULT_ENV.items():
        os.environ.setdefault(name, value)


def auto_num_threads() -> int | None:
    """The automatic thread count: None to keep the count the user stated in the environment
    (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, already adopted by torch), else
    :data:`AUTO_THREADS`."""
    if any(os.environ.get(name, "").strip() for name in COUNT_VARIABLES):
        return None
    return AUTO_THREADS


def apply_num_threads(num_threads: int) -> int:
    """Set torch's intra-op thread count from ``trainer.num_threads`` (0: automatic, see the module
    docstring) and return the count in effect."""
    import torch

    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    n = num_threads if num_threads > 0 else auto_num_threads()
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
