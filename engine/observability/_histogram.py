"""Latency histograms observed once per batch: fixed buckets, a bisect and two adds.

The runtime times each batch once per step (``perf_counter`` before and after)
and observes the batch's latency here, never a record's: the cost stays per
batch whatever the batch size. Observers read a frozen
:class:`HistogramSnapshot` through the run's statistics; the metrics collector
turns it into a Prometheus histogram at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import final

BATCH_BUCKETS: tuple[float, ...] = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
    2.5,
    10.0,
)
"""Upper bounds (seconds) for a batch's time in one step or one sink write: 250 µs to 10 s.

Twelve, not more: every bucket is a line of every scrape, per step.
"""

END_TO_END_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.01,
    0.025,
    0.1,
    0.25,
    1.0,
    2.5,
    10.0,
    30.0,
    120.0,
    600.0,
)
"""Upper bounds (seconds) from a batch's read to its done: a millisecond to ten minutes."""


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram as observed so far.

    Attributes:
        bounds: The buckets' upper bounds, ascending (``+Inf`` is implied).
        counts: Observations per bucket (not cumulative); one more than ``bounds``,
            the last for values above every bound.
        total: The sum of all observed values.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` per bucket, ending with ``+Inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile, linear within a bucket as Prometheus does; ``None`` if empty."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        lower, below = 0.0, 0
        for bound, running in self.cumulative():
            if running >= rank:
                if bound == float("inf"):
                    return lower
                inside = running - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, running
        return lower


@final
class LatencyHistogram:
    """A mutable histogram of seconds; :meth:`observe` is called once per batch."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = BATCH_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation (a value equal to a bound falls in that bound's bucket)."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def freeze(self) -> HistogramSnapshot:
        """An immutable copy."""
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total)
