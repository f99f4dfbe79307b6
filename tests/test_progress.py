"""mtlbench.progress: the tqdm bar (total, ETA, per-task losses), its reads, log lines with it."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from mtlbench import progress as progress_module
from mtlbench.progress import Progress


class CountingLosses:
    """Stands in for the detached loss tensor; counts every read of its values."""

    def __init__(self, values: list[float]) -> None:
        self.values, self.reads = values, 0

    def tolist(self) -> list[float]:
        self.reads += 1
        return list(self.values)

    def __float__(self) -> float:
        self.reads += 1
        return float(sum(self.values))

    def sum(self) -> CountingLosses:
        self.reads += 1
        return self

    def item(self) -> float:
        return self.__float__()


class FakeClock:
    def __init__(self, dt: float) -> None:
        self.t, self.dt = 1000.0, dt

    def __call__(self) -> float:
        return self.t

    def tick(self) -> None:
        self.t += self.dt


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """Factory: the progress module's perf_counter advances by ``dt`` per tick."""
    def make(dt: float) -> FakeClock:
        fake = FakeClock(dt)
        monkeypatch.setattr(progress_module.time, "perf_counter", fake)
        return fake
    return make


def rendered_lines(text: str) -> list[str]:
    """What a terminal shows: per line, each carriage-return segment overwrites from column 0."""
    lines = []
    for raw in text.split("\n"):
        shown = ""
        for segment in raw.split("\r"):
            shown = segment + shown[len(segment):]
        lines.append(shown.rstrip())
    return lines


def test_disabled_writes_nothing_and_reads_no_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    losses = CountingLosses([1.0, 2.0])
    with Progress(100, enabled=False, names=["a", "b"]) as bar:
        for step in range(1, 101):
            bar.update(step, losses)
            if step == 50:
                bar.clear()
    bar.close()
    assert err.getvalue() == ""
    assert losses.reads == 0
    assert bar.bar is None


def test_enabled_shows_total_eta_rate_and_each_task_loss(clock) -> None:
    out, tick = io.StringIO(), clock(0.05)
    bar = Progress(40, enabled=True, names=["left", "right"], file=out)
    for step in range(1, 41):
        tick.tick()
        bar.update(step, torch.tensor([0.25, 1.5 + step]))
    bar.close()
    lines = [line for line in rendered_lines(out.getvalue()) if line]
    final = lines[-1]
    assert "40/40" in final and "100%" in final
    assert "left=0.25" in final and "right=41.5" in final
    drawn = [part.strip() for part in re.split(r"[\r\n]", out.getvalue()) if part.strip()]
    middle = next(state for state in drawn if re.search(r"\b(1\d|2\d)/40", state))
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", middle), middle  # elapsed<ETA
    assert "step/s" in middle


def test_without_names_the_postfix_is_the_sum(clock) -> None:
    out, tick = io.StringIO(), clock(1.0)
    bar = Progress(2, enabled=True, file=out)
    for step in (1, 2):
        tick.tick()
        bar.update(step, torch.tensor([1.0, 2.0, 4.0]))
    bar.close()
    assert "loss=7" in rendered_lines(out.getvalue())[-2]


def test_losses_are_read_only_when_the_bar_redraws(clock) -> None:
    """1000 steps of 1 ms: redraws at most every 0.1 s and at the last step, ~11 reads."""
    out, tick = io.StringIO(), clock(0.001)
    losses = CountingLosses([0.5, 0.25])
    bar = Progress(1000, enabled=True, names=["a", "b"], file=out)
    for step in range(1, 1001):
        tick.tick()
        bar.update(step, losses)
    bar.close()
    assert 10 <= losses.reads <= 12
    assert "1000/1000" in out.getvalue()


def test_resumed_run_starts_at_its_step(clock) -> None:
    out, tick = io.StringIO(), clock(1.0)
    bar = Progress(100, enabled=True, file=out)
    for step in range(61, 64):
        tick.tick()
        bar.update(step, torch.tensor([1.0]))
    bar.close()
    shown = [line for line in rendered_lines(out.getvalue()) if line]
    assert "61/100" in out.getvalue() and "63/100" in shown[-1]
    assert not re.search(r"\b[0-5]?\d/100", out.getvalue())  # never counted from 0


@pytest.fixture
def hydra_like_logging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Call it in the test body (pytest's capture swaps ``sys.stderr`` back between setup and
    call): root gets a console handler on a stand-in for stderr and a file handler, as Hydra's
    job logging does; ``mtlbench`` propagates to it. Returns (stderr stand-in, console handler,
    log file). Restored afterwards."""
    root, before_level, added = logging.getLogger(), logging.getLogger().level, []

    def install():
        err = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        # only these two (handlers other tests' in-process Hydra runs left on root are set aside)
        monkeypatch.setattr(root, "handlers", [])
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("[%(levelname)s] - %(message)s"))
        logfile = logging.FileHandler(tmp_path / "cli.log")
        logfile.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
        added.extend([console, logfile])
        root.addHandler(console)
        root.addHandler(logfile)
        root.setLevel(logging.INFO)
        return err, console, tmp_path / "cli.log"

    yield install
    for handler in added:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(before_level)


def test_log_lines_print_whole_above_the_bar_and_reach_the_log_file(clock,
                                                                     hydra_like_logging) -> None:
    err, console, logfile = hydra_like_logging()
    tick, log = clock(0.2), logging.getLogger("mtlbench")
    handlers_before = list(logging.getLogger().handlers)
    message = "step 25/50  val left:accuracy=0.5  right:accuracy=0.25"
    with Progress(50, enabled=True, names=["left", "right"]) as bar:  # file: sys.stderr
        assert console not in logging.getLogger().handlers  # redirected while open
        for step in range(1, 51):
            tick.tick()
            if step == 25:
                log.info(message)
            bar.update(step, torch.tensor([0.5, 0.25]))
    assert logging.getLogger().handlers == handlers_before  # restored
    text = err.getvalue()
    assert "24/50" in text and "50/50" in text  # the bar was drawn before and after the line
    lines = rendered_lines(text)
    assert f"[INFO] - {message}" in lines  # a whole line on the console, nothing mixed in
    assert all(message not in line or line == f"[INFO] - {message}" for line in lines)
    assert f"[mtlbench][INFO] - {message}" in logfile.read_text().splitlines()


def test_redirect_keeps_the_console_handler_level(clock, hydra_like_logging) -> None:
    err, console, logfile = hydra_like_logging()
    console.setLevel(logging.WARNING)
    log = logging.getLogger("mtlbench")
    with Progress(5, enabled=True) as bar:
        assert console not in logging.getLogger().handlers
        bar.update(1, torch.tensor([1.0]))
        log.info("info only in the file")
        log.warning("a warning")
    assert "info only in the file" not in err.getvalue()
    assert "[WARNING] - a warning" in rendered_lines(err.getvalue())
    assert "info only in the file" in logfile.read_text()


def test_logging_is_restored_when_the_loop_raises(hydra_like_logging) -> None:
    _, console, _ = hydra_like_logging()
    handlers_before = list(logging.getLogger().handlers)
    with pytest.raises(RuntimeError), Progress(10, enabled=True) as bar:
        bar.update(1, torch.tensor([1.0]))
        assert console not in logging.getLogger().handlers
        raise RuntimeError("diverged")
    assert logging.getLogger().handlers == handlers_before
    bar.close()  # idempotent


def test_clear_erases_the_bar_line(clock) -> None:
    out, tick = io.StringIO(), clock(1.0)
    bar = Progress(10, enabled=True, file=out)
    tick.tick()
    bar.update(1, torch.tensor([1.0]))
    bar.clear()
    out.write("a plain line\n")
    bar.close()
    assert "a plain line" in rendered_lines(out.getvalue())
