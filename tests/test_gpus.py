"""One job per GPU (``mtlbench.gpus``): concurrent processes claim different GPUs, a claim is
released when its process dies (even by SIGKILL), a job waits while every GPU is taken, and the
parallel launcher's job count follows the visible GPUs — all without a GPU, on lock files."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweeps import compose_hydra

from mtlbench import gpus

CLAIM = ("import sys, time; from mtlbench.gpus import claim_gpu; "
         "print(claim_gpu(int(sys.argv[1]), poll_s=0.05), flush=True); time.sleep(30)")


def claimer(count: int, locks: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "MTLBENCH_GPU_LOCKS": str(locks)}
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(count)], env=env, text=True,
                            stdout=subprocess.PIPE)


def test_concurrent_jobs_get_different_gpus_and_a_killed_one_frees_its_own(tmp_path) -> None:
    procs = [claimer(3, tmp_path) for _ in range(3)]
    try:
        claimed = sorted(int(p.stdout.readline()) for p in procs)
        assert claimed == [0, 1, 2]
        waiting = claimer(3, tmp_path)  # every GPU is taken: it waits
        time.sleep(1.0)
        assert waiting.poll() is None
        victim = procs[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        got = int(waiting.stdout.readline())  # the killed job's GPU, once the kernel frees it
        assert got in claimed
        procs.append(waiting)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_process_keeps_its_claim(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MTLBENCH_GPU_LOCKS", str(tmp_path))
    monkeypatch.setattr(gpus, "_held", [])
    first = gpus.claim_gpu(4)
    assert gpus.claim_gpu(4) == first  # idempotent: a sequential multirun stays on its GPU
    for handle in gpus._held:
        handle.close()


@pytest.mark.parametrize("visible, jobs", [("0,1,2,3", 4), ("2", 1), ("", -1), ("-1", -1)])
def test_parallel_launcher_runs_one_job_per_visible_gpu(visible: str, jobs: int,
                                                        monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpus.parallel_jobs() == jobs
    cfg = compose_hydra(["hydra/launcher=local_parallel"])
    assert cfg.hydra.launcher.n_jobs == jobs  # the resolver, read when the launcher starts


def test_auto_device_claims_a_gpu_when_there_are_several(tmp_path, monkeypatch) -> None:
    import torch

    from mtlbench.train import resolve_device

    monkeypatch.setenv("MTLBENCH_GPU_LOCKS", str(tmp_path))
    monkeypatch.setattr(gpus, "_held", [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    with open(tmp_path / "gpu0.lock", "a+") as held:  # another job holds GPU 0
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            assert resolve_device("auto") == torch.device("cuda", 1) and chosen == [1]
        finally:
            for handle in gpus._held:
                handle.close()
