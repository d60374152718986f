"""Reading a source the way the runtime does, for the tests of each source."""

from __future__ import annotations

import tracemalloc
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from riprap import Pipeline, SourceContext
from riprap.checkpoints import MemoryCheckpoints
from riprap.testing import wait_until
from tests._sinks import GatedSink

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap import Sink, Source, SourceBatch

MIB = 1024 * 1024


async def read_batches(source: Source, max_records: int = 100) -> list[SourceBatch]:
    """Every batch the open ``source`` yields, ``max_records`` at most each, until it ends."""
    batches = []
    while (batch := await source.read(max_records)) is not None:
        batches.append(batch)
    return batches


async def read_to_end(
    source: Source,
    max_records: int = 100,
    positions: Mapping[str, int] | None = None,
    *,
    pipeline: str = "test",
    max_batch_bytes: int | None = None,
    identities: Mapping[str, str] | None = None,
) -> list[SourceBatch]:
    """Open ``source`` at ``positions`` (default: the start), read it to the end, close it."""
    context = SourceContext(
        pipeline=pipeline,
        positions=positions or {},
        max_batch_bytes=max_batch_bytes,
        identities=identities or {},
    )
    await source.open(context)
    try:
        return await read_batches(source, max_records)
    finally:
        await source.aclose()


async def read_to_end_traced(
    source: Source, max_records: int = 100
) -> tuple[list[SourceBatch], int]:
    """:func:`read_to_end` from the start, and the most memory Python allocated while reading.

    Tracing starts once the source is open, so what it counts is the reading
    (a client's start-up, loading its service models, is not).
    """
    await source.open(SourceContext(pipeline="test", positions={}))
    try:
        tracemalloc.start()
        try:
            batches = await read_batches(source, max_records)
            return batches, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        await source.aclose()


class Weighed:
    """``source`` with the ``nbytes`` of every batch of records it reads recorded in
    ``weights`` (batches without records left out), so that what a pipeline read is
    counted where it is read; everything else is the source's."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.name = source.name
        self.weights: list[int] = []

    async def open(self, context: SourceContext) -> None:
        await self.source.open(context)

    async def read(self, max_records: int) -> SourceBatch | None:
        batch = await self.source.read(max_records)
        if batch is not None and batch.values:
            self.weights.append(batch.nbytes)
        return batch

    async def aclose(self) -> None:
        await self.source.aclose()

    def __getattr__(self, name: str) -> Any:
        """The source's own optional hooks (``committed``, ``lag``...) and attributes."""
        return getattr(self.source, name)


def bounded_in_bytes(name: str, source: Source, sink: Sink, max_bytes: int | None) -> Pipeline:
    """``source`` to ``sink`` with ``max_in_flight_bytes=max_bytes``, checkpoints in memory."""
    return (
        Pipeline(name, checkpoint=MemoryCheckpoints(), max_in_flight_bytes=max_bytes)
        .source(source)
        .sink(sink)
    )


async def settle() -> None:
    """Give a run many turns of the event loop to read more if it could."""
    for _ in range(500):
        await anyio.lowlevel.checkpoint()


async def stalled_at_the_bound(
    name: str, source: Source, count: int, limit: int = MIB
) -> list[Any]:
    """Run ``source`` into a stalled sink with ``max_in_flight_bytes=limit``: reading must
    stop with the batch that reaches ``limit``. Then the sink moves; the first ``count``
    values it wrote."""
    sink = GatedSink()
    weighed = Weighed(source)
    weights = weighed.weights
    async with bounded_in_bytes(name, weighed, sink, limit).open() as running:
        await wait_until(lambda: sum(weights) >= limit, what=f"{limit} bytes read", timeout=20)
        await settle()
        assert sum(weights[:-1]) < limit <= sum(weights)
        sink.gate.set()
        await wait_until(lambda: len(sink.values) >= count, what=f"{count} written", timeout=20)
        running.stop()
        await running.wait()
    return sink.values[:count]


def assert_cut_at_the_limit(batches: list[SourceBatch], limit: int, record_bytes: int) -> None:
    """Records of about ``record_bytes`` each (at most a tenth more) were cut at ``limit``:
    every batch weighs its records, and each but the last reaches ``limit`` with its last
    record and not before."""
    assert 1 < len(batches) < sum(len(b) for b in batches)
    for batch in batches:
        assert len(batch) * record_bytes < batch.nbytes < len(batch) * record_bytes * 11 // 10
    for batch in batches[:-1]:
        assert batch.nbytes - batch.nbytes / len(batch) < limit <= batch.nbytes
