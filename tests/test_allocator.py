"""The CPU allocator setting of the training loop (trainer.retain_cpu_memory)."""

from __future__ import annotations

import platform
import sys

import pytest

from mtlbench import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_thresholds_are_accepted_by_glibc() -> None:
    assert allocator.retain_freed_memory() is True


def test_other_platforms_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.retain_freed_memory() is False


def test_a_threshold_glibc_rejects_reports_false(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    monkeypatch.setattr(allocator, "MMAP_THRESHOLD", 1 << 40)  # above glibc's maximum
    assert allocator.retain_freed_memory() is False
