"""The CPU allocator setting of the training loop (trainer.retain_cpu_memory)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from mtlbench import allocator

GLIBC = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's")


@GLIBC
def test_thresholds_are_accepted_by_glibc() -> None:
    assert allocator.retain_freed_memory() is True


def test_other_platforms_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.retain_freed_memory() is False


CHILD = """
import sys, torch
from mtlbench.allocator import retain_freed_memory
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
if sys.argv[1] == "retain":
    assert retain_freed_memory()
before = rss_mib()
block = torch.ones(16 * 1024 * 1024 // 4)  # 16 MiB, touched
del block
print(rss_mib() - before)
"""


@GLIBC
def test_freed_blocks_stay_in_the_process_only_when_retained() -> None:
    def kept_mib(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                             check=True)
        return float(out.stdout.strip().splitlines()[-1])

    assert kept_mib("retain") > 12  # the 16 MiB block's pages are still resident after free
    assert kept_mib("default") < 4  # glibc munmapped it
