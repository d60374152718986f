"""S3Sink limits: objects cut by count, size and age; acks held until written; replays line up."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

import riprap
import riprap.checkpoints
from riprap import Batch, ConfigError, SourceBatch
from riprap.checkpoints import Checkpoint
from riprap.connectors.memory import IterableSource
from riprap.connectors.s3 import S3Sink
from riprap.lowlevel import Ack, SourceOrigin
from riprap.testing import VirtualClock, run_pipeline
from tests.connectors._origins import repeated
from tests.engine.test_sink_feed import PacedSource

from .test_sink import batch_of, make_sink

if TYPE_CHECKING:
    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]

WAKE_UP = Batch([], Ack(lambda: None), None)
"""What the runtime writes when a sink's ``wake_at`` has passed."""


def name(first: str, last: str) -> str:
    """The key of an object of partition ``in`` from ``first`` to ``last`` (offset[.n])."""

    def position(text: str) -> str:
        offset, _, index = text.partition(".")
        return f"{int(offset):020d}" + (f".{index}" if index else "")

    return f"out/in/{position(first)}-{position(last)}.jsonl"


async def contents(store: Store, prefix: str = "out/") -> dict[str, list[Any]]:
    """Every object under ``prefix`` with its records."""
    return {
        key: [orjson.loads(line) for line in (await store.get(key)).splitlines()]
        for key in await store.keys(prefix)
    }


def every_record(objects: dict[str, list[Any]]) -> list[Any]:
    """The records of all objects in key order, duplicates kept."""
    return [record for key in sorted(objects) for record in objects[key]]


def test_bad_limits_name_the_option() -> None:
    """A limit that is not a positive count or a positive, finite duration names its option."""
    cases: list[dict[str, Any]] = [
        {"max_records": 0},
        {"max_records": True},
        {"max_records": 2.5},
        {"max_bytes": 0},
        {"max_bytes": -1},
        {"max_age": 0},
        {"max_age": -1.0},
        {"max_age": float("inf")},
        {"max_age": float("nan")},
        {"max_age": "5"},
        {"max_age": timedelta(0)},
    ]
    options = []
    for case in cases:
        with pytest.raises(ConfigError) as caught:
            S3Sink("bucket", **case)
        options.append(caught.value.option)
    assert [next(iter(case)) for case in cases] == options


async def test_max_records_cuts_objects_across_batches(store: Store) -> None:
    """Records accumulate across batches into objects of max_records; flush writes the rest."""
    sink = make_sink(store, max_records=3)
    await sink.open()
    try:
        for start, stop in ((0, 4), (4, 8), (8, 10)):
            await sink.write(batch_of(list(range(start, stop)), start=start))
        before_flush = await store.keys("out/")
        filling = sink.statistics().records_filling
        await sink.flush()
    finally:
        await sink.aclose()
    assert [name("0", "2"), name("3", "5"), name("6", "8")] == before_flush
    assert (1, [9]) == (filling, (await contents(store))[name("9", "9")])


async def test_max_bytes_bounds_each_body(store: Store) -> None:
    """No body passes max_bytes; a record larger than the limit is an object of its own."""
    values: list[Any] = [{"n": i} for i in range(6)]  # 8 bytes a line
    values.append({"text": "x" * 40})
    large = len(orjson.dumps(values[-1])) + 1
    sink = make_sink(store, max_bytes=20)
    await sink.open()
    try:
        await sink.write(batch_of(values))
        await sink.flush()
    finally:
        await sink.aclose()
    sizes = {key: len(await store.get(key)) for key in await store.keys("out/")}
    expected = {name("0", "1"): 16, name("2", "3"): 16, name("4", "5"): 16, name("6", "6"): large}
    assert expected == sizes


async def test_acks_are_held_until_the_object_is_written(store: Store) -> None:
    """A record is done only once the PUT of its object succeeded."""
    done: list[bool] = []
    source = SourceBatch("in", [1, 2], start=0)
    batch = Batch([1, 2], Ack(lambda: done.append(True)), SourceOrigin(source))
    sink = make_sink(store, max_records=5)
    await sink.open()
    try:
        await sink.write(batch)
        batch.ack.release()  # the runtime lets go once write returns
        held = list(done)
        await sink.flush()
    finally:
        await sink.aclose()
    assert ([], [True]) == (held, done)


async def test_max_age_cuts_in_virtual_time(store: Store) -> None:
    """An object is cut max_age after its first record, at the first write after that."""
    clock = VirtualClock()
    sink = make_sink(store, max_age=10.0, clock=clock)
    await sink.open()
    try:
        await sink.write(batch_of([0, 1]))
        clock.advance(4)
        await sink.write(batch_of([2], start=2))
        waiting = (sink.wake_at(), await store.keys("out/"))
        clock.advance(6)
        await sink.write(WAKE_UP)
        cut = (sink.wake_at(), await store.keys("out/"))
        await sink.write(batch_of([3], start=3))
        next_wake = sink.wake_at()
    finally:
        await sink.aclose()
    assert (10.0, []) == waiting
    assert (None, [name("0", "2")]) == cut
    assert 20.0 == next_wake


async def test_outputs_of_one_record_are_numbered_in_names(store: Store) -> None:
    """Records sharing a source offset (a flat_map's) may be split; names tell them apart."""
    source = SourceBatch("in", ["a", "b"], start=0)
    batch = Batch(
        ["a0", "a1", "a2", "b0", "b1"], Ack(lambda: None), repeated(source, [0, 0, 0, 1, 1])
    )
    sink = make_sink(store, max_records=2)
    await sink.open()
    try:
        await sink.write(batch)
        await sink.flush()
    finally:
        await sink.aclose()
    expected = {
        name("0", "0.1"): ["a0", "a1"],
        name("0.2", "1"): ["a2", "b0"],
        name("1.1", "1.1"): ["b1"],
    }
    assert expected == await contents(store)


async def test_kms_encryption_is_requested(store: Store) -> None:
    """sse="aws:kms" with a key id stores every object encrypted with that key."""
    sink = make_sink(store, sse="aws:kms", sse_kms_key_id="alias/records")
    await sink.open()
    try:
        await sink.write(batch_of([1]))
    finally:
        await sink.aclose()
    head = await store.head(name("0", "0"))
    assert ("aws:kms", "alias/records") == (head["ServerSideEncryption"], head["SSEKMSKeyId"])


async def test_a_replay_lines_up_with_objects_cut_by_time(store: Store) -> None:
    """After count and time cuts and a crash, a replay from a checkpoint inside the first
    object skips what that object holds and rewrites the later objects as they were.
    """
    clock = VirtualClock()
    first = make_sink(store, max_records=4, max_age=10.0, clock=clock)
    await first.open()
    await first.write(batch_of([0, 1, 2]))
    await first.write(batch_of([3, 4, 5], start=3))  # 0-3 by count
    clock.advance(10)
    await first.write(WAKE_UP)  # 4-5 by time
    await first.write(batch_of([6, 7, 8], start=6))
    await first.write(batch_of([9], start=9))  # 6-9 by count
    await first.aclose()  # the process dies; its checkpoint said 3
    written = await contents(store)
    replay = make_sink(store, max_records=4)
    await replay.open()
    try:
        for start, stop in ((3, 6), (6, 9), (9, 10)):
            await replay.write(batch_of(list(range(start, stop)), start=start))
        await replay.flush()
    finally:
        await replay.aclose()
    stats = replay.statistics()
    assert [name("0", "3"), name("4", "5"), name("6", "9")] == list(written)
    assert written == await contents(store)
    assert (1, 0, 2) == (stats.records_skipped, stats.objects_deleted, stats.objects_written)


async def test_a_rerun_that_cuts_differently_replaces_objects(store: Store) -> None:
    """A rerun with other limits deletes the objects it cuts differently: no record twice."""
    first = make_sink(store)
    await first.open()
    await first.write(batch_of(list(range(6))))
    await first.aclose()
    rerun = make_sink(store, max_records=2)
    await rerun.open()
    try:
        await rerun.write(batch_of(list(range(6))))
    finally:
        await rerun.aclose()
    objects = await contents(store)
    assert [name("0", "1"), name("2", "3"), name("4", "5")] == list(objects)
    assert (list(range(6)), 1) == (every_record(objects), rerun.statistics().objects_deleted)


def sparse_batch(values: list[Any], offsets: list[int]) -> Batch:
    """A batch of partition ``in`` whose records sit at ``offsets`` (gaps between them)."""
    source = SourceBatch("in", values, start=offsets[0], offsets=offsets)
    return Batch(list(values), Ack(lambda: None), SourceOrigin(source))


async def test_a_holder_far_before_the_replay_is_found(store: Store) -> None:
    """An object that began thousands of offsets before the replay's start, yet holds its
    first record, is found: that record is skipped, not written twice.
    """
    first = make_sink(store, max_records=2)
    await first.open()
    await first.write(sparse_batch(["a", "b", "c"], [0, 5_000, 5_001]))
    await first.flush()
    await first.aclose()
    written = await contents(store)
    replay = make_sink(store, max_records=2)
    await replay.open()
    try:
        await replay.write(sparse_batch(["b", "c"], [5_000, 5_001]))
        await replay.flush()
    finally:
        await replay.aclose()
    assert [name("0", "5000"), name("5001", "5001")] == list(written)
    assert (written, 1) == (await contents(store), replay.statistics().records_skipped)


async def test_a_stored_object_whose_first_record_is_gone_is_deleted(store: Store) -> None:
    """A rerun in which a stored object's first record no longer reaches the sink (a filter
    changed) deletes that object; its other records go to the object that takes over.
    """
    first = make_sink(store, max_records=3)
    await first.open()
    await first.write(batch_of(list(range(6))))
    await first.aclose()
    rerun = make_sink(store, max_records=3)
    await rerun.open()
    try:
        await rerun.write(sparse_batch([0, 1, 2, 4, 5], [0, 1, 2, 4, 5]))
        await rerun.flush()
    finally:
        await rerun.aclose()
    objects = await contents(store)
    assert {name("0", "2"): [0, 1, 2], name("4", "5"): [4, 5]} == objects
    assert 1 == rerun.statistics().objects_deleted


def build(pipeline: str, source: riprap.Source, sink: S3Sink, **options: Any) -> riprap.Pipeline:
    """``source`` -> ``sink`` with memory checkpoints, no sink retries (virtual time)."""
    options.setdefault("checkpoint", riprap.checkpoints.MemoryCheckpoints())
    return (
        riprap.Pipeline(pipeline, checkpoint_interval=1_000.0, **options)
        .source(source)
        .sink(sink, retry=None, attempt_timeout=None)
    )


async def test_the_sink_never_holds_the_source_up(store: Store) -> None:
    """With a size limit the records in flight never reach, an object is cut as soon as the
    sink holds more than max_in_flight - batch_size source records, and the run completes.
    """
    values = [{"n": i} for i in range(100)]
    source = IterableSource("events", values, partition="in")
    sink = make_sink(store, max_bytes=10**9)
    pipeline = build("held", source, sink, batch_size=10, max_in_flight=30)
    with anyio.fail_after(60):
        report = await pipeline.run()
    objects = await contents(store)
    bounds = [(0, 29), (30, 59), (60, 89), (90, 99)]  # cut once a batch takes it past 20
    assert [name(str(a), str(b)) for a, b in bounds] == list(objects)
    assert (100, values) == (report.records_out, every_record(objects))


async def test_max_records_beyond_in_flight_is_refused(store: Store) -> None:
    """A max_records the pipeline could never hold in flight is a ConfigError naming it."""
    source = IterableSource("events", [1], partition="in")
    sink = make_sink(store, max_records=25)
    pipeline = build("refused", source, sink, batch_size=10, max_in_flight=30)
    with pytest.raises(ConfigError) as caught:
        await pipeline.run()
    assert "max_records" == caught.value.option


async def test_a_pipeline_cuts_by_time_in_virtual_time(store: Store) -> None:
    """On a stream quieter than max_age, each object is written max_age after its first record."""
    clock = VirtualClock()
    chunks = [[{"n": i} for i in range(5)], [{"n": i} for i in range(5, 10)]]
    sink = make_sink(store, max_age=10.0)
    pipeline = build("timed", PacedSource(chunks, 100.0, clock), sink, batch_size=10)
    report = await run_pipeline(pipeline, clock=clock)
    keys = ["out/paced/00000000000000000000-00000000000000000004.jsonl"]
    keys.append("out/paced/00000000000000000005-00000000000000000009.jsonl")
    assert (10, keys) == (report.records_out, await store.keys("out/"))


async def test_a_replay_after_time_cuts_writes_no_record_twice(store: Store) -> None:
    """Run 1 cuts every object by time; run 2 replays from a checkpoint that lagged, without
    pauses (so no time cuts): it rewrites the same objects, and each record is in one.
    """
    clock = VirtualClock()
    values = [{"n": i} for i in range(10)]
    chunks = [values[0:3], values[3:6], values[6:9], values[9:]]
    first = make_sink(store, max_records=4, max_age=10.0)
    await run_pipeline(
        build("replayed", PacedSource(chunks, 100.0, clock), first, batch_size=5),
        clock=clock,
    )
    written = await contents(store)
    checkpoints = riprap.checkpoints.MemoryCheckpoints()
    claim = await checkpoints.claim("replayed", "crashed")
    await checkpoints.save(
        Checkpoint("replayed", claim.epoch, "crashed", seq=1, positions={"paced": 3})
    )
    replay_source = PacedSource(chunks[1:], 0.0, riprap.SystemClock(), start=3)
    replay = make_sink(store, max_records=4)
    await build("replayed", replay_source, replay, batch_size=5, checkpoint=checkpoints).run()
    assert 4 == len(written)
    assert (written, values) == (await contents(store), every_record(await contents(store)))
    assert (0, 3) == (replay.statistics().objects_deleted, replay.statistics().objects_written)
