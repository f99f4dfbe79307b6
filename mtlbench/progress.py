"""A minimal one-line progress bar on stderr for interactive single runs.

It redraws in place with a carriage return and is cleared before every log line, so Hydra's log
lines never get mixed into it. Disabled (no output at all) in multirun jobs and when stderr is not a
tty.
"""

from __future__ import annotations

import sys
import time

from torch import Tensor


class Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.start = time.perf_counter()
        self.last_draw = 0.0

    def update(self, step: int, losses: Tensor) -> None:
        """Redraw (at most every 0.1 s) with the sum of this step's task losses; reading the
        losses (a device sync on GPU) happens only when the bar is drawn."""
        now = time.perf_counter()
        if not self.enabled or (now - self.last_draw < 0.1 and step < self.total):
            return
        self.last_draw = now
        width = 30
        filled = int(width * step / self.total)
        rate = step / max(now - self.start, 1e-9)
        bar = "#" * filled + "-" * (width - filled)
        loss = float(losses.sum())
        sys.stderr.write(f"\r[{bar}] {step}/{self.total} loss={loss:.4g} {rate:.0f} it/s")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def close(self) -> None:
        self.clear()
