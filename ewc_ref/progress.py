"""The one progress reporter of ewc_ref: a counter line or stage lines on stderr, silenced by --quiet.

Every long computation (training, Fisher, diagnose, laplace, figures) reports the same way::

    fisher exact/diag: 500/1000 (50%) rows, 1.2 s elapsed, about 1.2 s left

what is counted (`unit`), the count, the fraction, the time so far and an estimate of the time left
(elapsed x remaining / done: the work is assumed to go on at its average rate). On a terminal the
line is redrawn in place (``\\r``, at most every `interval` seconds); when stderr is a file or a pipe
(a log, CI) whole lines are written instead, the first at the first update, then at most one every
`LOG_INTERVAL` seconds, and always the last, so a log never holds ``\\r`` redraws.

Library code calls it unconditionally; ``enabled=False`` (the default of every public
``progress=`` argument) makes it a no-op. tqdm is not used: it would be the only dependency of the
leaf utilities for one small class, and on a stream that is not a terminal it still redraws with
``\\r`` unless it is disabled altogether.
"""

from __future__ import annotations

import sys
import time

#: Seconds between two whole lines when the stream is not a terminal.
LOG_INTERVAL = 10.0


def _duration(seconds: float) -> str:
    """'0.4 s', '12 s', '3 min 05 s', '1 h 02 min': short enough for one line."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Report ``label: done/total (pct%) unit, elapsed, time left`` on stderr (module docstring).

    Disabled (a no-op) when `enabled` is False, so library code can call it unconditionally.

    Parameters
    ----------
    total : the count at which the work is done (>= 1 is used).
    label : what the work is (``fisher exact/diag``).
    enabled : False: print nothing.
    interval : seconds between two redraws on a terminal.
    stream : where to write (default sys.stderr); a terminal when its ``isatty()`` is True.
    unit : what is counted (``rows``, ``epochs``, ``figures``).
    """

    def __init__(self, total: int, label: str, enabled: bool = True, interval: float = 0.5, stream=None,
                 unit: str = "steps"):
        self.total, self.label, self.enabled, self.interval = max(int(total), 1), label, enabled, interval
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty()) if callable(isatty) else False
        self.start = self.last = time.perf_counter()
        self.done = 0
        self._shown = -1  # the count last written (-1: nothing written yet)
        self._open = 0  # on a terminal: the width of a drawn line not yet ended by a newline

    def line(self, now: float | None = None) -> str:
        """The progress line for the current count (no newline, no carriage return)."""
        elapsed = (time.perf_counter() if now is None else now) - self.start
        pct = 100.0 * self.done / self.total
        text = f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {self.unit}, {_duration(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", about {_duration(elapsed * (self.total - self.done) / self.done)} left"
        return text

    def update(self, amount: int = 1) -> None:
        self.done += amount
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.done >= self.total
        if self.terminal:
            due = now - self.last >= self.interval
        else:
            due = self._shown < 0 or now - self.last >= LOG_INTERVAL
        if due or finished:
            self._write(now)

    def _write(self, now: float) -> None:
        self.last, self._shown = now, self.done
        if self.terminal:  # redraw in place; the padding erases a longer previous line
            text = self.line(now)
            self.stream.write("\r" + text.ljust(self._open))
            self._open = len(text)
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the report: the terminal line is finished with a newline; a log gets the last count."""
        if not self.enabled:
            return
        if self.done > 0 and self._shown != self.done:
            self._write(time.perf_counter())
        self._end_line()

    def _end_line(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = 0

    def stage(self, message: str) -> None:
        """Print ``label: message`` on a line of its own (for work reported by stages, not counts)."""
        if self.enabled:
            self._end_line()
            self.stream.write(f"{self.label}: {message}\n")
            self.stream.flush()
