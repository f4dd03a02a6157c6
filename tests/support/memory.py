"""Peak traced memory of a block, for the tests that bound what a reader or a computation holds."""

from __future__ import annotations

import contextlib
import tracemalloc


class TracedPeak:
    """``peak``: tracemalloc's peak in bytes over the block, set when the block exits."""

    peak: int = 0


@contextlib.contextmanager
def traced_peak():
    """Trace the block's allocations; its peak is in ``.peak`` afterwards. Tracing stops even when the block
    raises (a failing test must not leave every later test traced, and slowed, by tracemalloc)."""
    result = TracedPeak()
    tracemalloc.start()
    try:
        yield result
    finally:
        result.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
