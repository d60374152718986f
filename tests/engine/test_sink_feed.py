"""Sinks that hold records back: bound to the run, woken at their deadline, flushed in drains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import riprap
import riprap.checkpoints
from riprap import Batch, SinkContext, SourceBatch, SourceContext
from riprap.testing import VirtualClock, run_pipeline

if TYPE_CHECKING:
    from collections.abc import Mapping

pytestmark = pytest.mark.anyio


class PacedSource:
    """Partition ``paced``: ``chunks`` one batch each from ``start``, ``pause`` seconds apart."""

    name = "paced"

    def __init__(
        self, chunks: list[list[Any]], pause: float, clock: riprap.Clock, *, start: int = 0
    ) -> None:
        self.chunks = chunks
        self.pause = pause
        self.clock = clock
        self.next = 0
        self.position = start

    async def open(self, context: SourceContext) -> None:
        await anyio.lowlevel.checkpoint()

    async def read(self, max_records: int) -> SourceBatch | None:
        if self.next == len(self.chunks):
            return None
        if self.next:
            await self.clock.sleep(self.pause)
        values = self.chunks[self.next]
        self.next += 1
        start, self.position = self.position, self.position + len(values)
        return SourceBatch("paced", values, start=start)

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


class HoldingSink:
    """Holds what it is given (acks retained) for ``max_age`` seconds, or until flushed."""

    name = "holding"
    idempotent = False

    def __init__(self, max_age: float | None = None) -> None:
        self.max_age = max_age
        self.context: SinkContext | None = None
        self.held: list[Batch] = []
        self.since: float | None = None
        self.written: list[tuple[float, list[Any]]] = []

    def bind(self, context: SinkContext) -> None:
        self.context = context

    def wake_at(self) -> float | None:
        if self.since is None or self.max_age is None:
            return None
        return self.since + self.max_age

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def write(self, batch: Batch) -> None:
        await anyio.lowlevel.checkpoint()
        assert self.context is not None
        now = self.context.clock.monotonic()
        if not batch.items:
            deadline = self.wake_at()
            if deadline is not None and now >= deadline:
                self._release(now)
            return
        batch.ack.retain()
        self.held.append(batch)
        if self.since is None:
            self.since = now

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self.held:
            assert self.context is not None
            self._release(self.context.clock.monotonic())

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()

    def _release(self, now: float) -> None:
        held, self.held, self.since = self.held, [], None
        self.written.append((now, [item for batch in held for item in batch.items]))
        for batch in held:
            batch.ack.release()


async def test_a_holding_sink_is_bound_and_woken_in_virtual_time() -> None:
    """The sink gets the run's clock and bounds, and is woken at its deadline on a quiet stream."""
    clock = VirtualClock()
    sink = HoldingSink(max_age=10.0)
    source = PacedSource([[0, 1, 2], [3, 4, 5]], pause=100.0, clock=clock)
    pipeline = (
        riprap.Pipeline(
            "held",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            batch_size=5,
            max_in_flight=50,
            checkpoint_interval=1_000.0,
        )
        .source(source)
        .sink(sink)
    )
    report = await run_pipeline(pipeline, clock=clock)
    assert sink.context is not None
    assert (clock, 5, 50) == (
        sink.context.clock,
        sink.context.batch_size,
        sink.context.max_in_flight,
    )
    assert [(10.0, [0, 1, 2]), (100.0, [3, 4, 5])] == sink.written
    assert ({"paced": 6}, 6) == (dict(report.positions), report.records_out)


class DrainingSource:
    """Hands out one batch, then gives its partition up (a rebalance) and ends."""

    name = "draining"

    def __init__(self) -> None:
        self.context: SourceContext | None = None
        self.drained: Mapping[str, int] | None = None
        self.reads = 0

    async def open(self, context: SourceContext) -> None:
        await anyio.lowlevel.checkpoint()
        self.context = context

    async def read(self, max_records: int) -> SourceBatch | None:
        self.reads += 1
        if self.reads == 1:
            return SourceBatch("p", [1, 2, 3], start=0)
        if self.reads == 2:
            assert self.context is not None
            self.drained = await self.context.drain(["p"], 30.0)
        return None

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


async def test_a_drain_writes_what_the_sink_holds() -> None:
    """Draining a partition makes a sink that would hold its records forever write them now."""
    sink = HoldingSink()
    source = DrainingSource()
    pipeline = (
        riprap.Pipeline("drained", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=5)
        .source(source)
        .sink(sink)
    )
    with anyio.fail_after(20):
        await pipeline.run()
    assert ({"p": 3}, [[1, 2, 3]]) == (source.drained, [items for _, items in sink.written])
