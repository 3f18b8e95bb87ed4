"""api/heap.py: when the streams' objects are frozen out of the garbage collector's sight, and when they are
thawed and collected."""

from __future__ import annotations

import gc
import weakref
from typing import Iterator

import pytest

from api.heap import GROWTH, Heap


@pytest.fixture
def heap() -> Iterator[Heap]:
    gc.unfreeze()
    yield Heap()
    gc.unfreeze()


class Cycle:
    """Garbage only the collector can free."""

    def __init__(self) -> None:
        self.me = self


def test_few_streams_freeze_nothing(heap: Heap) -> None:
    assert heap.tend(GROWTH - 1) == "" and gc.get_freeze_count() == 0


def test_growing_streams_freeze_and_halved_ones_thaw_and_collect(heap: Heap) -> None:
    assert heap.tend(GROWTH) == "freeze" and gc.get_freeze_count() > 0 and heap.frozen_at == GROWTH
    assert heap.tend(GROWTH + 10) == ""  # not grown by GROWTH since
    assert heap.tend(2 * GROWTH) == "freeze" and heap.frozen_at == 2 * GROWTH
    assert heap.tend(GROWTH + 1) == ""  # more than half of what was frozen
    assert heap.tend(GROWTH) == "thaw" and gc.get_freeze_count() == 0 and heap.frozen_at == 0
    assert heap.tend(GROWTH) == "freeze"  # the streams left are frozen again on the next look


def test_falling_streams_trim_the_allocator_each_time_they_have_fallen_by_growth(heap: Heap) -> None:
    trims = []
    heap._trim = lambda: trims.append(1)  # glibc's malloc_trim counted here: what it frees is the bench's to show
    assert heap.tend(3 * GROWTH) == "freeze"
    assert heap.tend(2 * GROWTH + 1) == "" and not trims  # not fallen by GROWTH yet
    assert heap.tend(2 * GROWTH) == "trim" and len(trims) == 1
    assert heap.tend(GROWTH + GROWTH // 2 + 1) == ""  # fallen by less than GROWTH since that trim
    assert heap.tend(GROWTH + GROWTH // 2) == "thaw" and len(trims) == 2  # half of what was frozen: thawed, trimmed
    assert heap.tend(GROWTH // 2 + 1) == "" and heap.tend(0) == "trim" and len(trims) == 3


def test_young_garbage_is_collected_before_a_freeze_and_frozen_garbage_at_the_thaw(heap: Heap) -> None:
    young = Cycle()
    young_ref = weakref.ref(young)
    del young
    heap.tend(GROWTH)
    assert young_ref() is None  # collected, not frozen
    frozen = Cycle()
    frozen_ref = weakref.ref(frozen)
    gc.freeze()  # as if it had been frozen while its stream ran
    del frozen
    gc.collect()
    assert frozen_ref() is not None  # out of the collector's sight
    assert heap.tend(0) == "thaw" and frozen_ref() is None
