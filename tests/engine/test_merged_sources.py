"""Merged sources: several sources read at once into one pipeline, positions under their names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import riprap
import riprap.checkpoints
from riprap import ConfigError, SourceBatch, SourceContext
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.testing import wait_all_tasks_blocked, wait_until
from tests._sinks import GatedSink

if TYPE_CHECKING:
    from collections.abc import Mapping

pytestmark = pytest.mark.anyio


def pipeline(name: str = "merged", **options: Any) -> riprap.Pipeline:
    """A pipeline with in-memory checkpoints (unless given) and no source yet."""
    options.setdefault("checkpoint", riprap.checkpoints.MemoryCheckpoints())
    return riprap.Pipeline(name, **options)


class GatedSource:
    """Serves ``values`` as one partition, a batch only while its gate is open; ends after them.

    Records what the runtime hands its hooks: ``committed`` positions and the context.
    """

    idempotent = False

    def __init__(self, name: str, values: list[Any], partition: str = "p") -> None:
        self.name = name
        self.values = values
        self.partition = partition
        self.gate = anyio.Event()
        self.position = 0
        self.committed_positions: list[dict[str, int]] = []
        self.context: SourceContext | None = None
        self.closed = False

    async def open(self, context: SourceContext) -> None:
        self.context = context
        self.position = context.positions.get(self.partition, 0)
        await anyio.lowlevel.checkpoint()

    async def read(self, max_records: int) -> SourceBatch | None:
        await self.gate.wait()
        if self.position >= len(self.values):
            return None
        start = self.position
        self.position = min(len(self.values), start + max_records)
        return SourceBatch(self.partition, self.values[start : self.position], start=start)

    async def committed(self, positions: Mapping[str, int]) -> None:
        self.committed_positions.append(dict(positions))
        await anyio.lowlevel.checkpoint()

    def lag(self) -> dict[str, int]:
        return {self.partition: len(self.values) - self.position}

    async def aclose(self) -> None:
        self.closed = True
        await anyio.lowlevel.checkpoint()


async def test_every_record_of_every_source_arrives_and_positions_carry_the_names() -> None:
    """Two sources, one pipeline: each record once, each position under ``name/partition``."""
    sink = MemorySink()
    report = await (
        pipeline(batch_size=7)
        .sources(
            orders=IterableSource("o", list(range(40)), partition="0"),
            refunds=IterableSource("r", list(range(100, 125)), partition="0"),
        )
        .map("double", lambda v: v * 2)
        .sink(sink)
        .run()
    )
    expected = sorted([v * 2 for v in range(40)] + [v * 2 for v in range(100, 125)])
    assert expected == sorted(sink.values)
    assert {"orders/0": 40, "refunds/0": 25} == dict(report.positions)
    assert ("completed", 65) == (report.outcome, report.records_in)


async def test_a_source_that_ends_leaves_the_others_reading() -> None:
    """The short source ends at once; the other, held back, is read to its end afterwards."""
    slow = GatedSource("slow", list(range(30)))
    sink = MemorySink()
    p = pipeline(batch_size=10).sources(short=IterableSource("s", ["a", "b", "c"]), slow=slow)
    async with p.sink(sink).open() as running:
        await wait_until(lambda: len(sink.values) == 3)
        await wait_all_tasks_blocked()
        assert ["a", "b", "c"] == sink.values  # the short one ended, the run did not
        assert running.report is None
        slow.gate.set()
        report = await running.wait()
    assert ["a", "b", "c", *range(30)] == sink.values
    assert {"short/memory": 3, "slow/p": 30} == dict(report.positions)


async def test_max_in_flight_holds_across_the_sources() -> None:
    """With the sink held, both sources together read no more than ``max_in_flight`` records."""
    sink = GatedSink()
    p = pipeline(batch_size=8, max_in_flight=16, queue_size=1).sources(
        a=IterableSource("a", list(range(1_000))),
        b=IterableSource("b", list(range(1_000, 2_000))),
    )
    async with p.sink(sink).open() as running:
        await wait_all_tasks_blocked()
        stats = running.statistics()
        assert 0 < stats.records_in <= 16
        assert {"a/memory", "b/memory"} == set(stats.positions)  # both were read
        sink.gate.set()
        report = await running.wait()
    assert sorted(range(2_000)) == sorted(sink.values)
    assert {"a/memory": 1_000, "b/memory": 1_000} == dict(report.positions)


async def test_a_restart_resumes_each_source_at_its_own_position_whatever_the_order() -> None:
    """Positions belong to the names: a second run, sources given the other way round, reads on."""
    checkpoint = riprap.checkpoints.MemoryCheckpoints()
    first = MemorySink()
    await (
        pipeline(checkpoint=checkpoint)
        .sources(a=IterableSource("a", list(range(10))), b=IterableSource("b", ["x", "y"]))
        .sink(first)
        .run()
    )
    second = MemorySink()
    report = await (
        pipeline(checkpoint=checkpoint)
        .sources(
            b=IterableSource("b", ["x", "y", "z"]),
            a=IterableSource("a", list(range(12))),
        )
        .sink(second)
        .run()
    )
    assert [10, 11, "z"] == sorted(second.values, key=str)
    assert {"a/memory": 12, "b/memory": 3} == dict(report.positions)


async def test_hooks_reach_each_source_under_its_own_partition_names() -> None:
    """Opening positions, ``committed``, ``lag`` and ``drain`` speak each source's own names."""
    checkpoint = riprap.checkpoints.MemoryCheckpoints()
    await (
        pipeline(checkpoint=checkpoint)
        .sources(a=IterableSource("a", [1, 2]), b=IterableSource("b", [3]))
        .sink(MemorySink())
        .run()
    )
    a, b = GatedSource("a", [1, 2, 3, 4], partition="memory"), GatedSource("b", [3])
    b.gate.set()
    sink = MemorySink()
    async with pipeline(checkpoint=checkpoint).sources(a=a, b=b).sink(sink).open() as running:
        assert a.context is not None
        assert b.context is not None
        assert ({"memory": 2}, {"memory": 1}) == (
            dict(a.context.positions),
            dict(b.context.positions),
        )
        await wait_until(lambda: [3] == sink.values)
        assert {"a/memory": 2, "b/p": 0} == running.statistics().source.lag
        drained = await a.context.drain(["memory"], 1.0)
        assert {"memory": 2} == dict(drained)
        a.gate.set()
        await running.wait()
    assert {"memory": 4} == a.committed_positions[-1]
    assert {"memory": 1, "p": 1} == b.committed_positions[-1]  # its old partition too
    assert (True, True) == (a.closed, b.closed)


def test_describe_shows_every_source_by_name() -> None:
    """The outline and the flowchart name each source of the merge."""
    p = (
        pipeline()
        .sources(orders=IterableSource("o", []), refunds=IterableSource("r", []))
        .map("parse", str)
        .sink(MemorySink())
    )
    text = p.describe()
    assert "source orders: o (IterableSource)" in text
    assert "source refunds: r (IterableSource)" in text
    chart = p.describe("mermaid")
    assert 'n0["source orders: o (IterableSource)"]' in chart
    assert "n0 --> n2" in chart
    assert "n1 --> n2" in chart


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda p: p.sources(), "sources"),
        (lambda p: p.sources(**{"a/b": IterableSource("x", [])}), "sources.a/b"),
        (lambda p: p.sources(a=IterableSource("x", []), b=p.source_), "sources.b"),
        (lambda p: p.sources(a=object()), "sources.a"),
    ],
)
def test_bad_sources_are_refused_naming_the_option(build: Any, option: str) -> None:
    """No source, a bad name, a non-source are refused when the pipeline is built."""
    with pytest.raises(ConfigError) as caught:
        build(pipeline())
    assert option == caught.value.option


def test_one_source_object_under_two_names_is_refused() -> None:
    """Two names over one source object would share its position: refused."""
    source = IterableSource("x", [])
    with pytest.raises(ConfigError, match=r"same source object as sources\.a"):
        pipeline().sources(a=source, b=source)


def test_a_second_source_call_is_refused_either_way() -> None:
    """``.source()`` and ``.sources()`` never silently replace each other."""
    with pytest.raises(ConfigError, match=r"\.sources\(a=\.\.\., b=\.\.\.\)"):
        pipeline().source(IterableSource("x", [])).source(IterableSource("y", []))
    with pytest.raises(ConfigError, match="already has a source"):
        pipeline().sources(a=IterableSource("x", [])).source(IterableSource("y", []))
    with pytest.raises(ConfigError, match="already has a source"):
        pipeline().source(IterableSource("x", [])).sources(a=IterableSource("y", []))


async def test_reading_a_merge_by_hand_takes_the_sources_in_turn() -> None:
    """Reading the merged source by hand yields each source's batches in turn, prefixed."""
    merged = (
        pipeline().sources(a=IterableSource("a", [1, 2, 3]), b=IterableSource("b", [4])).source_
    )
    assert merged is not None
    await merged.open(SourceContext(pipeline="p", positions={"a/memory": 1}))
    got = []
    while (batch := await merged.read(1)) is not None:
        got.append((batch.partition, batch.values))
    await merged.aclose()
    assert [("a/memory", [2]), ("b/memory", [4]), ("a/memory", [3])] == got


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(), max_size=40), min_size=1, max_size=4),
    st.integers(1, 8),
    st.integers(0, 20),
)
def test_any_merge_delivers_every_record_once_in_each_sources_order(
    sources: list[list[int]], batch_size: int, room: int
) -> None:
    """Whatever the sources and bounds: each record arrives once, each source's in its order."""
    sink = MemorySink()
    named = {
        f"s{i}": IterableSource(f"s{i}", [(i, value) for value in values])
        for i, values in enumerate(sources)
    }
    p = pipeline(batch_size=batch_size, max_in_flight=batch_size + room, queue_size=1)
    report = anyio.run(p.sources(**named).sink(sink).run)
    for i, values in enumerate(sources):
        assert values == [value for source, value in sink.values if source == i]
    assert sum(map(len, sources)) == len(sink.values)
    expected = {f"s{i}/memory": len(values) for i, values in enumerate(sources) if values}
    assert expected == {name: n for name, n in report.positions.items() if n}


async def test_a_stop_ends_the_reads_of_every_source() -> None:
    """Stopping while one source waits for records ends the run cleanly, with what was done."""
    waiting = GatedSource("waiting", [1, 2, 3])
    sink = MemorySink()
    p = pipeline().sources(done=IterableSource("d", ["x", "y"]), waiting=waiting).sink(sink)
    async with p.open() as running:
        await wait_until(lambda: ["x", "y"] == sink.values)
        running.stop()
        report = await running.wait()
    assert ("stopped", {"done/memory": 2}) == (report.outcome, dict(report.positions))
    assert waiting.closed


async def test_an_abort_cancels_every_source_task() -> None:
    """Aborting while both sources wait ends the run at once; nothing is lost or invented."""
    first, second = GatedSource("first", [1]), GatedSource("second", [2])
    p = pipeline().sources(first=first, second=second).sink(MemorySink())
    async with p.open() as running:
        await wait_all_tasks_blocked()
        running.abort()
        with anyio.fail_after(5):
            report = await running.wait()
    assert ("aborted", 0) == (report.outcome, report.records_in)
