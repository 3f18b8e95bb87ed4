"""Keeping the garbage collector's pauses off live streams, and handing memory back when streams end.

A full collection walks every object the process holds. With 5,000 streams open (about 100 objects each) one
paused the event loop for about 0.4 s, and every stream's next event waited that long (gc.callbacks beside the
relay's own lag, docs/BENCHMARKS.md). So once the streams have grown, what survived the young collections is
frozen (gc.freeze: out of the collector's sight; reference counting still frees it when its stream ends), and full
collections walk only what is newer. When the streams fall to half of what was frozen, everything is thawed and
collected once (a pause in proportion to the streams left). Whenever the streams have fallen by GROWTH since the
last look that did something, the C allocator is asked to hand its free memory back to the system (malloc_trim,
where glibc provides it): trimming only at the thaw left what the other half freed later in the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Callable

GROWTH = 100  # streams beyond those open at the last freeze before freezing again


def _malloc_trim() -> Callable[[], None]:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda: None

    def trim_now() -> None:
        trim(0)

    return trim_now


class Heap:
    """Freezes the objects of a growing set of streams; thaws and collects when it has halved; trims as it falls."""

    def __init__(self) -> None:
        self.frozen_at = 0  # streams open at the last freeze; 0: nothing of ours is frozen
        self.high = 0  # the most streams open since the last trim
        self._trim = _malloc_trim()

    def tend(self, streams: int) -> str:
        """Look at how many streams are open; returns what was done: 'freeze', 'thaw', 'trim' or ''."""
        self.high = max(self.high, streams)
        if self.frozen_at and streams <= self.frozen_at // 2:
            gc.unfreeze()
            gc.collect()
            self.frozen_at = 0
            return self._trimmed(streams, "thaw")
        if streams >= self.frozen_at + GROWTH:
            gc.collect(1)  # what is garbage among the young objects goes now, not into the frozen set
            gc.freeze()
            self.frozen_at = streams
            return "freeze"
        if streams <= self.high - GROWTH:
            return self._trimmed(streams, "trim")
        return ""

    def _trimmed(self, streams: int, done: str) -> str:
        self._trim()
        self.high = streams
        return done
