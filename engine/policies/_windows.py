"""Sliding windows of call outcomes for the circuit breaker, in bounded memory.

Both windows keep running totals (calls, failures, slow calls), so recording
an outcome and reading the totals cost O(1) amortised, whatever the size.
"""

from __future__ import annotations

import math
from typing import Protocol, final


class OutcomeWindow(Protocol):
    """Totals of the outcomes recorded recently."""

    calls: int
    """Outcomes recorded and not expired yet (a time window expires them in ``totals``)."""

    def add(self, now: float, failed: bool, slow: bool) -> None: ...

    def totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` in the window at time ``now``."""
        ...

    def clear(self) -> None: ...


@final
class CountWindow:
    """The outcomes of the last ``size`` calls, in a ring buffer."""

    __slots__ = ("_pos", "_ring", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._ring = [0] * size  # bit 0: failed, bit 1: slow
        self._pos = 0
        self.calls = self.failures = self.slow = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        ring, pos = self._ring, self._pos
        if self.calls == len(ring):
            old = ring[pos]
            if old:  # most calls neither fail nor are slow: nothing to take back
                self.failures -= old & 1
                self.slow -= old >> 1
        else:
            self.calls += 1
        if failed or slow:
            ring[pos] = failed | (slow << 1)
            self.failures += failed
            self.slow += slow
        else:
            ring[pos] = 0
        pos += 1
        self._pos = 0 if pos == len(ring) else pos

    def totals(self, now: float) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slow

    def clear(self) -> None:
        self._ring = [0] * len(self._ring)
        self._pos = 0
        self.calls = self.failures = self.slow = 0


TIME_BUCKETS = 20
"""A time window is split into this many buckets: outcomes expire a bucket at a time."""


@final
class TimeWindow:
    """The outcomes of the last ``seconds``, aggregated in :data:`TIME_BUCKETS` buckets.

    An outcome recorded at time t counts until the bucket holding t leaves the
    window, i.e. for between ``seconds * (1 - 1/TIME_BUCKETS)`` and ``seconds``.
    """

    __slots__ = ("_calls", "_failures", "_head", "_slow", "_width", "calls", "failures", "slow")

    def __init__(self, seconds: float) -> None:
        self._width = seconds / TIME_BUCKETS
        self._calls = [0] * TIME_BUCKETS
        self._failures = [0] * TIME_BUCKETS
        self._slow = [0] * TIME_BUCKETS
        self._head: int | None = None  # absolute index of the newest bucket
        self.calls = self.failures = self.slow = 0

    def _advance(self, now: float) -> int:
        """Expire the buckets that left the window; the absolute index of ``now``'s bucket."""
        index = math.floor(now / self._width)
        head = self._head
        if head is None or index - head >= TIME_BUCKETS:
            self.clear()
            self._head = index
            return index
        if index > head:
            for expired in range(head + 1, index + 1):
                self._drop(expired % TIME_BUCKETS)
            self._head = index
            return index
        return head  # same bucket (or a clock that went back: keep the newest)

    def _drop(self, slot: int) -> None:
        self.calls -= self._calls[slot]
        self.failures -= self._failures[slot]
        self.slow -= self._slow[slot]
        self._calls[slot] = self._failures[slot] = self._slow[slot] = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        slot = self._advance(now) % TIME_BUCKETS
        self._calls[slot] += 1
        self._failures[slot] += failed
        self._slow[slot] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        return self.calls, self.failures, self.slow

    def clear(self) -> None:
        for slot in range(TIME_BUCKETS):
            self._drop(slot)
