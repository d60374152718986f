"""Completion tracking: acks, per-partition committable positions, the in-flight bound.

Every source batch gets one :class:`Ack`. Derived batches share it; anything
that holds records beyond the normal flow (a DLQ write, a buffering sink, a
fan-out) ``retain()``-s it and ``release()``-s it when its records are done.
When the count reaches zero the batch's position range is marked done in its
:class:`PartitionTracker`, which advances the committable position only over a
contiguous done prefix (I1).
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, final

import anyio

from riprap._core.errors import StalledError
from riprap.observability._histogram import END_TO_END_BUCKETS, LatencyHistogram

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


@final
class Ack:
    """A reference count over records that share one completion callback."""

    __slots__ = ("_bound", "_on_done", "_parks", "_pending", "_records")

    def __init__(self, on_done: Callable[[], None]) -> None:
        self._pending = 1
        self._on_done = on_done
        self._records = 0
        """Records of the in-flight bound it gives back when done (a source batch's)."""
        self._parks = 0
        """Holders that are stages waiting for more input (``InFlight.park``)."""
        self._bound: InFlight | None = None
        """The bound told when only parks are left holding it."""

    @property
    def done(self) -> bool:
        """Whether every holder has released it."""
        return self._pending == 0

    def retain(self, n: int = 1) -> None:
        """Add ``n`` holders; each must call :meth:`release` once."""
        if self._pending <= 0:
            raise RuntimeError("retain() on an ack that is already done")
        self._pending += n

    def release(self) -> None:
        """Drop one holder; the last one completes the ack."""
        self._pending -= 1
        if self._pending == 0:
            self._on_done()
        elif self._pending == self._parks:  # only stages waiting for input hold it now
            assert self._bound is not None
            self._bound.nudge()
        elif self._pending < 0:
            raise RuntimeError("ack released more often than retained")


def combined_ack(acks: list[Ack]) -> Ack:
    """An ack that releases every ack in ``acks`` when it is done (merged batches)."""

    def release_all() -> None:
        for ack in acks:
            ack.release()

    return Ack(release_all)


@final
class _Range:
    __slots__ = ("done", "end", "size", "start")

    def __init__(self, start: int, end: int, size: int) -> None:
        self.start = start
        self.end = end
        self.size = size
        self.done = False


@final
class PartitionTracker:
    """Committable position of one partition: the lowest position not yet done.

    Ranges are opened in source order and may complete in any order; the
    position moves only over the done prefix.
    """

    __slots__ = ("_pending", "committable", "partition")

    def __init__(self, partition: str, position: int) -> None:
        self.partition = partition
        self.committable = position
        self._pending: deque[_Range] = deque()

    def open(self, start: int, end: int, size: int) -> _Range:
        """Register positions ``[start, end)`` holding ``size`` records as in flight."""
        last = self._pending[-1].end if self._pending else self.committable
        if start < last:
            raise ValueError(
                f"partition {self.partition!r}: range starting at {start} overlaps "
                f"positions up to {last} already handed out"
            )
        rng = _Range(start, end, size)
        if not self._pending:
            self.committable = start
        self._pending.append(rng)
        return rng

    def complete(self, rng: _Range) -> None:
        """Mark a range done and advance over the done prefix."""
        rng.done = True
        pending = self._pending
        while pending and pending[0].done:
            self.committable = pending.popleft().end
        if pending:
            self.committable = pending[0].start

    @property
    def pending_ranges(self) -> int:
        """Number of ranges not yet committable."""
        return len(self._pending)


@final
class InFlight:
    """Bounds the records between the source and done, and their bytes (I9); the source waits.

    Records are taken before a read (``acquire``); bytes, which a source knows
    only once it has read, are counted when its batch is handed on, so the
    bound in bytes may be passed by the batch read last.

    Stages that keep batches until more input arrives say so (``park``). A
    source waiting for room while every record in flight is parked would wait
    forever (no record can reach those stages): it gets :class:`StalledError`.
    """

    __slots__ = (
        "_changed",
        "_on_wait",
        "_parked",
        "byte_capacity",
        "bytes",
        "capacity",
        "in_flight",
        "waiting",
    )

    def __init__(self, capacity: int, byte_capacity: int | None = None) -> None:
        self.capacity = capacity
        self.byte_capacity = byte_capacity
        self.bytes = 0
        self.in_flight = 0
        self.waiting = 0
        """Acquires waiting for room now (sources that cannot read on)."""
        self._changed: anyio.Event | None = None
        self._on_wait: list[Callable[[], None]] = []
        self._parked: dict[Ack, list[str]] = {}

    def on_wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever an acquire starts waiting for room."""
        self._on_wait.append(callback)

    def _full(self, n: int) -> bool:
        limit = self.byte_capacity
        return self.in_flight + n > self.capacity or (limit is not None and self.bytes >= limit)

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more records fit, and the bytes are under their bound; count them in."""
        n = min(n, self.capacity)
        if self._full(n):
            self.waiting += 1
            try:
                for callback in self._on_wait:
                    callback()
                while self._full(n):
                    if self._parked:
                        self._check_stall(n)
                    await self._wait_change()
            finally:
                self.waiting -= 1
        self.in_flight += n

    def park(self, ack: Ack, stage: str) -> None:
        """``stage`` keeps a batch under ``ack`` until more input arrives; look for a stall."""
        self._parked.setdefault(ack, []).append(stage)
        ack._parks += 1
        ack._bound = self
        self.nudge()

    def unpark(self, ack: Ack, stage: str) -> None:
        """``stage`` let go of a batch it parked under ``ack``."""
        stages = self._parked.get(ack)
        if stages is None or stage not in stages:
            raise RuntimeError(f"stage {stage!r} unparked a batch it did not park")
        stages.remove(stage)
        ack._parks -= 1
        if not stages:
            del self._parked[ack]

    def nudge(self) -> None:
        """Have a source waiting for room look for a stall again (a park, a share let go)."""
        if self.waiting:
            self._wake()

    def _check_stall(self, n: int) -> None:
        """Raise :class:`StalledError` if every record in flight is parked.

        Only source batches parked by nothing but stages count (an ack also held
        elsewhere, say by a part still on its way, may yet bring records): a
        stall found is certain, a stall missed only waits as before.
        """
        parked = 0
        stages: set[str] = set()
        for ack, holders in self._parked.items():
            if ack._pending == ack._parks:
                parked += ack._records
                stages.update(holders)
        if parked >= self.in_flight:
            bound, limit = "max_in_flight", self.capacity
            if self.in_flight + n <= self.capacity and self.byte_capacity is not None:
                bound, limit = "max_in_flight_bytes", self.byte_capacity
            raise StalledError(
                stages=tuple(sorted(stages)), records=self.in_flight, bound=bound, limit=limit
            )

    def release(self, n: int, nbytes: int = 0) -> None:
        """Count ``n`` records (and ``nbytes`` of theirs) out."""
        self.in_flight -= n
        self.bytes -= nbytes
        event = self._changed  # inline, not _wake(): once per batch
        if event is not None:
            self._changed = None
            event.set()

    def _wake(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    async def wait_change(self) -> None:
        """Wait until some records are counted out (an ack completed)."""
        await self._wait_change()

    async def wait_empty(self) -> None:
        """Wait until no record is in flight."""
        while self.in_flight > 0:
            await self._wait_change()

    async def _wait_change(self) -> None:
        # Events are created only when someone waits: most releases find no waiter.
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()


@final
class CompletionTracker:
    """Tracks every partition of a run and turns done batches into positions.

    ``latency`` holds the seconds from each source batch's ack to its done
    (the end-to-end latency), observed once per batch.
    """

    __slots__ = ("_partitions", "in_flight", "latency", "on_change")

    def __init__(
        self, positions: Mapping[str, int], in_flight: InFlight, on_change: Callable[[], None]
    ) -> None:
        self._partitions = {p: PartitionTracker(p, pos) for p, pos in positions.items()}
        self.in_flight = in_flight
        self.on_change = on_change
        self.latency = LatencyHistogram(END_TO_END_BUCKETS)

    def partition(self, name: str, default_position: int = 0) -> PartitionTracker:
        """The tracker of ``name``, created at ``default_position`` on first use."""
        tracker = self._partitions.get(name)
        if tracker is None:
            tracker = self._partitions[name] = PartitionTracker(name, default_position)
        return tracker

    def ack_for(
        self, partition: str, start: int, end: int, size: int, reserved: int, nbytes: int = 0
    ) -> Ack:
        """An ack for a new source batch; ``reserved`` slots and ``nbytes`` return when done."""
        tracker = self.partition(partition, start)
        rng = tracker.open(start, end, size)
        in_flight = self.in_flight
        in_flight.bytes += nbytes
        on_change = self.on_change
        latency = self.latency
        read_at = perf_counter()

        def on_done() -> None:
            tracker.complete(rng)
            in_flight.release(reserved, nbytes)
            latency.observe(perf_counter() - read_at)
            on_change()

        ack = Ack(on_done)
        ack._records = reserved
        return ack

    def positions(self) -> dict[str, int]:
        """The committable position of every partition (a consistent cut, no await)."""
        return {name: t.committable for name, t in self._partitions.items()}

    def pending(self, partition: str) -> bool:
        """Whether ``partition`` has records handed out and not yet done."""
        tracker = self._partitions.get(partition)
        return tracker is not None and tracker.pending_ranges > 0

    def any_pending(self) -> bool:
        """Whether any partition has records handed out and not yet done."""
        return any(t.pending_ranges > 0 for t in self._partitions.values())

    def forget(self, partition: str) -> None:
        """Stop tracking a partition (it was revoked and its position committed)."""
        self._partitions.pop(partition, None)
