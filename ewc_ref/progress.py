"""The one progress reporter of ewc_ref: a counter line or stage lines on stderr, silenced by --quiet.

Library code calls it unconditionally; ``enabled=False`` (the default of every public
``progress=`` argument) makes it a no-op.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Print ``label: done/total (pct%) elapsed`` on stderr, at most every `interval` seconds.

    Disabled (a no-op) when `enabled` is False, so library code can call it unconditionally.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, interval: float = 0.5, stream=None):
        self.total, self.label, self.enabled, self.interval = max(int(total), 1), label, enabled, interval
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, amount: int = 1) -> None:
        self.done += amount
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last >= self.interval or self.done >= self.total:
            self.last = now
            pct = 100.0 * self.done / self.total
            self.stream.write(f"\r{self.label}: {self.done}/{self.total} ({pct:.0f}%) {now - self.start:.1f}s")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def stage(self, message: str) -> None:
        """Print ``label: message`` on a line of its own (for work reported by stages, not counts)."""
        if self.enabled:
            self.stream.write(f"{self.label}: {message}\n")
            self.stream.flush()
