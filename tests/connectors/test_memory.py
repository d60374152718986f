"""The in-memory source and sink."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from riprap import Batch, Record, Sink, Source, SourceBatch, SourceContext
from riprap.connectors.memory import YIELD_EVERY, IterableSource, ListSink, MemorySink
from riprap.lowlevel import Ack, SourceOrigin
from tests._sources import read_batches


def context(**positions: int) -> SourceContext:
    return SourceContext(pipeline="test", positions=positions)


def values_of(batch: SourceBatch | None) -> list[Any]:
    assert batch is not None
    return batch.values


def batch_of(values: list[Any], partition: str = "p", start: int = 0) -> Batch:
    source = SourceBatch(partition, values, start=start)
    return Batch(list(values), Ack(lambda: None), SourceOrigin(source))


def test_protocols() -> None:
    """The source and the sink satisfy the engine's protocols."""
    assert isinstance(IterableSource("numbers", []), Source)
    assert isinstance(MemorySink(), Sink)


@pytest.mark.anyio
async def test_list_source_batches() -> None:
    """A list is served in batches of at most max_records with index positions."""
    source = IterableSource("numbers", list(range(10)))
    await source.open(context())
    batches = await read_batches(source, 4)
    expected = [([0, 1, 2, 3], 0, 4), ([4, 5, 6, 7], 4, 8), ([8, 9], 8, 10)]
    assert expected == [(b.values, b.start, b.end) for b in batches]
    partitions = ["memory"] * 3
    assert partitions == [b.partition for b in batches]


@pytest.mark.anyio
async def test_exhausted_source_keeps_returning_none() -> None:
    """Once exhausted, read returns None again."""
    source = IterableSource("numbers", [1])
    await source.open(context())
    await read_batches(source, 10)
    assert None is await source.read(10)


@pytest.mark.anyio
async def test_list_source_resumes_from_position() -> None:
    """A checkpointed position skips the values before it."""
    source = IterableSource("numbers", list(range(10)), partition="nums")
    await source.open(context(nums=7))
    batches = await read_batches(source, 100)
    expected = [(7, [7, 8, 9], 10)]
    assert expected == [(b.start, b.values, b.end) for b in batches]


@pytest.mark.anyio
async def test_list_source_sees_appends() -> None:
    """A list is read lazily, so values appended before the end are served."""
    values = [1, 2]
    source = IterableSource("numbers", values)
    await source.open(context())
    first = await source.read(2)
    values.append(3)
    second = await source.read(2)
    expected = ([1, 2], [3])
    assert expected == (values_of(first), values_of(second))


@pytest.mark.anyio
async def test_iterator_source_resumes_by_skipping() -> None:
    """A one-shot iterator skips the checkpointed prefix and keeps index positions."""
    source = IterableSource("gen", (i * 10 for i in range(6)))
    await source.open(context(memory=2))
    batches = await read_batches(source, 3)
    expected = [(2, [20, 30, 40]), (5, [50])]
    assert expected == [(b.start, b.values) for b in batches]


@pytest.mark.anyio
async def test_iterator_source_cannot_rewind() -> None:
    """Re-opening a consumed iterator at an earlier position is an error."""
    source = IterableSource("gen", iter(range(5)))
    await source.open(context())
    await source.read(3)
    with pytest.raises(RuntimeError, match="cannot rewind"):
        await source.open(context())


@pytest.mark.anyio
async def test_keys_from_sequence_and_function() -> None:
    """Keys come from a parallel sequence or from a function of the value."""
    listed = IterableSource("a", [1, 2, 3], keys=["x", "y", "z"])
    computed = IterableSource("b", iter([1, 2, 3]), keys=lambda v: v % 2)
    for source in (listed, computed):
        await source.open(context(memory=1))
    first, second = await listed.read(5), await computed.read(5)
    assert first is not None
    assert second is not None
    expected = (["y", "z"], [0, 1])
    assert expected == (first.keys, second.keys)


def test_key_sequence_needs_a_list() -> None:
    """A key sequence cannot be matched to a one-shot iterator."""
    with pytest.raises(TypeError, match="needs a list"):
        IterableSource("a", iter([1]), keys=["x"])


@pytest.mark.anyio
async def test_memory_sink_collects_values_and_records() -> None:
    """The sink keeps every value, and records with their source position on request."""
    sink = MemorySink("out", keep_records=True)
    await sink.open()
    await sink.write(batch_of(["a", "b"], partition="p", start=5))
    await sink.write(batch_of(["c"], partition="q", start=0))
    await sink.flush()
    await sink.aclose()
    values = ["a", "b", "c"]
    assert values == sink.values
    expected = [("a", "p", 5), ("b", "p", 6), ("c", "q", 0)]
    assert expected == [(r.value, r.partition, r.offset) for r in sink.records]


@pytest.mark.anyio
async def test_memory_sink_without_records() -> None:
    """By default only values are kept."""
    sink = MemorySink()
    await sink.write(batch_of([1, 2]))
    expected: tuple[list[Any], list[Record]] = ([1, 2], [])
    assert expected == (sink.values, sink.records)


def test_memory_sink_is_not_idempotent() -> None:
    """Replays append again, so the sink declares itself not idempotent."""
    expected = (False, "memory")
    assert expected == (MemorySink().idempotent, MemorySink().name)


def test_list_sink_alias() -> None:
    """ListSink is the same class as MemorySink."""
    assert MemorySink is ListSink


@pytest.mark.anyio
async def test_the_source_gives_the_loop_a_turn_per_thousand_records_not_per_batch() -> None:
    """Batches of 10: another task runs once per ``YIELD_EVERY`` records read, not per batch."""
    source = IterableSource("numbers", list(range(5 * YIELD_EVERY)))
    await source.open(context())
    turns = 0
    done = False

    async def other() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await anyio.lowlevel.cancel_shielded_checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        await anyio.lowlevel.checkpoint()  # let it start
        started = turns
        read = 0
        while (batch := await source.read(10)) is not None:
            read += len(batch.values)
        done = True
    assert 5 * YIELD_EVERY == read
    assert 4 <= turns - started <= 6  # a turn per YIELD_EVERY records (500 batches)


@pytest.mark.anyio
async def test_a_cancelled_reader_stops_within_a_thousand_records() -> None:
    """Reads in a cancelled scope end at the next turn, ``YIELD_EVERY`` records at most."""
    source = IterableSource("numbers", list(range(10 * YIELD_EVERY)))
    await source.open(context())
    read = 0
    with anyio.CancelScope() as scope:
        scope.cancel()
        while await source.read(10) is not None:
            read += 10
    assert scope.cancelled_caught
    assert read <= YIELD_EVERY
