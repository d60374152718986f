"""Offset gaps are never silent: a recreated topic, retention, and a drain that times out."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

import riprap
import riprap.checkpoints
from riprap import SourceBatch, SourceContext
from riprap.connectors.kafka import KafkaSource, OffsetGapError, json_value
from riprap.connectors.kafka._gaps import offset_gap
from riprap.connectors.memory import MemorySink
from riprap.testing import wait_until

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import KafkaHelper, Message

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

DEADLINE = 30.0


def orders(count: int, prefix: str = "k") -> list[Message]:
    """``count`` keyed JSON orders."""
    return [(f"{prefix}{i}".encode(), orjson.dumps({"id": i, "qty": 1}), []) for i in range(count)]


def make_source(kafka: KafkaHelper, topic: str, group: str, **options: Any) -> KafkaSource:
    """A source on ``topic`` with the fast test group settings."""
    return KafkaSource(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        consumer_options=FAST_GROUP,
        **options,
    )


def build(source: KafkaSource, sink: MemorySink, database: Path) -> riprap.Pipeline:
    """Kafka -> decode -> memory, checkpointed to SQLite."""
    return (
        riprap.Pipeline(
            "gaps",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(database),
            checkpoint_interval=0.05,
        )
        .source(source)
        .map("decode", json_value)
        .sink(sink)
    )


async def run_until(pipeline: riprap.Pipeline, sink: MemorySink, count: int) -> riprap.RunReport:
    """Run until ``sink`` holds ``count`` values, then stop gracefully; the run's report."""
    with anyio.fail_after(DEADLINE):
        async with pipeline.open() as running:
            await wait_until(lambda: len(sink.values) >= count, timeout=DEADLINE)
            running.stop()
            return await running.wait()


async def recreate(kafka: KafkaHelper, topic: str) -> None:
    """Delete ``topic`` and create it again, empty, with one partition."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        for _ in range(100):
            try:
                await admin.create_topics([NewTopic(topic, 1, 1)])
                break
            except Exception:  # the deletion may still be under way
                await anyio.sleep(0.05)
    finally:
        await admin.close()


async def first_run_then_recreate(kafka: KafkaHelper, tmp_path: Path) -> tuple[str, Path]:
    """Checkpoint 300 records of a one-partition topic, then recreate it with 50 new ones."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, orders(300))
    database = tmp_path / "checkpoints.db"
    sink = MemorySink()
    group = f"g-{uuid.uuid4().hex}"
    report = await run_until(build(make_source(kafka, topic, group), sink, database), sink, 300)
    assert {f"{topic}:0": 300} == dict(report.positions)
    await recreate(kafka, topic)
    await kafka.produce(topic, orders(50, prefix="n"))
    return topic, database


def test_offset_gap_tells_retention_from_a_recreated_topic() -> None:
    """Below the earliest offset is retention, past the latest a recreated topic, else no gap."""
    expected = ["retention", None, None, None, "beyond"]
    assert expected == [offset_gap(offset, 10, 20) for offset in (9, 10, 15, 20, 21)]


async def test_a_checkpoint_beyond_a_recreated_topic_stops_the_run(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """After the topic is deleted and recreated, the old checkpoint is an error naming the gap."""
    topic, database = await first_run_then_recreate(kafka, tmp_path)
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}")
    with anyio.fail_after(DEADLINE), pytest.raises(OffsetGapError) as caught:
        await build(source, MemorySink(), database).run()
    expected = (
        f"topic {topic!r} partition 0: checkpointed offset 300 is beyond the latest offset "
        "(the broker keeps offsets 0..50): the topic was probably deleted and recreated, "
        "and its offsets started again; set on_gap='skip' to count the gap and resume at offset 0"
    )
    assert expected == str(caught.value)


async def test_on_gap_skip_counts_the_gap_and_reads_the_recreated_topic_from_its_start(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """With on_gap='skip' the gap is counted and every record of the new topic is read."""
    topic, database = await first_run_then_recreate(kafka, tmp_path)
    group = f"g-{uuid.uuid4().hex}"
    sink = MemorySink()
    source = make_source(kafka, topic, group, on_gap="skip")
    report = await run_until(build(source, sink, database), sink, 50)
    expected = ({"offset_gaps": 1}, list(range(50)), {f"{topic}:0": 50})
    actual = (
        dict(report.source_outcomes),
        sorted(value["id"] for value in sink.values),
        dict(report.positions),
    )
    assert expected == actual
    assert {f"{topic}:0": 50} == await kafka.committed(topic, group, partitions=1)


class ListedEarliest:
    """Patches ``AIOKafkaConsumer.beginning_offsets`` to list ``earliest`` for one topic.

    The test broker cannot delete records (no ``DeleteRecords``, no retention on
    memory storage), so retention is simulated by what the broker lists as the
    earliest offset; the fetches themselves are real.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, topic: str, earliest: int) -> None:
        real = AIOKafkaConsumer.beginning_offsets

        async def beginning_offsets(consumer: Any, partitions: list[Any]) -> dict[Any, int]:
            listed: dict[Any, int] = await real(consumer, partitions)
            return {tp: earliest if tp.topic == topic else o for tp, o in listed.items()}

        monkeypatch.setattr(AIOKafkaConsumer, "beginning_offsets", beginning_offsets)


async def read_offsets(source: KafkaSource, count: int = 0, *, through: int = -1) -> list[int]:
    """Offsets of the next ``count`` records read, or of those read through offset ``through``."""
    offsets: list[int] = []
    with anyio.fail_after(DEADLINE):
        for _ in range(1_000):
            if (count and len(offsets) >= count) or (offsets and offsets[-1] >= through >= 0):
                break
            batch: SourceBatch | None = await source.read(count - len(offsets) if count else 100)
            assert batch is not None
            offsets.extend(batch.offsets or [])
    return offsets


async def test_a_checkpoint_below_the_earliest_offset_is_a_retention_gap(
    kafka: KafkaHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint older than the earliest offset kept stops the source, naming the range."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, orders(100))
    ListedEarliest(monkeypatch, topic, 40)
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}")
    await source.open(SourceContext(pipeline="p", positions={f"{topic}:0": 10}))
    try:
        with anyio.fail_after(DEADLINE), pytest.raises(OffsetGapError) as caught:
            await read_offsets(source, 1)
    finally:
        await source.aclose()
    message = str(caught.value)
    # The test broker lists a partition's latest offset oddly (the start of its last
    # batch); the range's upper end is checked in the recreated-topic test.
    head = f"topic {topic!r} partition 0: checkpointed offset 10 is below the earliest offset "
    head += "(the broker keeps offsets 40.."
    tail = (
        "records 10..39 were deleted by retention before this pipeline read them; "
        "set on_gap='skip' to count the gap and resume at offset 40"
    )
    expected = ("retention", head, tail)
    assert expected == (caught.value.kind, message[: len(head)], message[-len(tail) :])


async def test_on_gap_skip_resumes_at_the_earliest_offset_and_counts_the_records_skipped(
    kafka: KafkaHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With on_gap='skip' a retention gap is counted in gap_records and reading goes on."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, orders(100))
    ListedEarliest(monkeypatch, topic, 40)
    counted: dict[str, int] = {}

    def count(outcome: str, n: int) -> None:
        counted[outcome] = counted.get(outcome, 0) + n

    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}", on_gap="skip")
    await source.open(SourceContext(pipeline="p", positions={f"{topic}:0": 10}, count=count))
    try:
        offsets = await read_offsets(source, 60)
    finally:
        await source.aclose()
    expected = (list(range(40, 100)), {"offset_gaps": 1, "gap_records": 30})
    assert expected == (offsets, counted)


async def test_falling_behind_retention_while_running_is_a_gap_not_a_silent_reset(
    kafka: KafkaHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch out of range mid-run (retention overtook the reader) is counted and skipped."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, orders(100))
    counted: dict[str, int] = {}

    def count(outcome: str, n: int) -> None:
        counted[outcome] = counted.get(outcome, 0) + n

    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}", on_gap="skip", max_poll_records=20)
    await source.open(SourceContext(pipeline="p", positions={}, count=count))
    try:
        first = await read_offsets(source, 20)
        ListedEarliest(monkeypatch, topic, 70)
        consumer = source._consumer
        real = consumer.getmany
        tp = TopicPartition(topic, 0)
        fetching: list[int] = []

        async def getmany(**kwargs: Any) -> Any:
            if not fetching:  # once: the broker answers that the next fetch is out of range
                fetching.append(await consumer.position(tp))
                raise OffsetOutOfRangeError({tp: fetching[0]})
            return await real(**kwargs)

        monkeypatch.setattr(consumer, "getmany", getmany)
        rest = await read_offsets(source, through=99)
    finally:
        await source.aclose()
    # Records buffered before the fetch failed are handed out; then it resumes at 70.
    position = fetching[0]
    expected = (
        list(range(20)),
        [*range(20, position), *range(70, 100)],
        {"offset_gaps": 1, "gap_records": 70 - position},
    )
    assert expected == (first, rest, counted)


def stored(database: Path, pipeline: str = "gaps") -> riprap.checkpoints.Checkpoint:
    """The pipeline's latest checkpoint, read from the SQLite store."""
    import sqlite3

    with sqlite3.connect(database) as db:
        (data,) = db.execute(
            "SELECT snapshot FROM riprap_checkpoints WHERE pipeline = ?", (pipeline,)
        ).fetchone()
    return riprap.checkpoints.decode(data, where=str(database), pipeline=pipeline)


async def first_run_then_refill(
    kafka: KafkaHelper, tmp_path: Path, *, last_apart: bool = False
) -> tuple[str, Path]:
    """Checkpoint 300 records, then recreate the topic with 500 others: more than were read,
    so the checkpointed offset lies inside the new topic's offsets.

    The broker lists a partition's latest offset as the start of its last record batch: 0
    for 500 records produced at once (the position looks past the end until a fetch
    confirms it), 499 when the last one is produced on its own (inside from the start).
    """
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, orders(300))
    database = tmp_path / "checkpoints.db"
    sink = MemorySink()
    group = f"g-{uuid.uuid4().hex}"
    await run_until(build(make_source(kafka, topic, group), sink, database), sink, 300)
    await recreate(kafka, topic)
    refill: list[Message] = [(b"n%d" % i, orjson.dumps({"id": 1000 + i}), []) for i in range(500)]
    if last_apart:
        await kafka.produce(topic, refill[:-1])
        refill = refill[-1:]
    await kafka.produce(topic, refill)
    return topic, database


@pytest.mark.parametrize("last_apart", [False, True], ids=["listed-behind", "listed-inside"])
async def test_a_recreated_topic_holding_more_than_the_checkpoint_stops_the_run(
    kafka: KafkaHelper, tmp_path: Path, last_apart: bool
) -> None:
    """Offsets alone cannot tell: 300 is inside the new 0..500. The record before it is not
    the one read there, so the run stops before handing out any of the new topic."""
    topic, database = await first_run_then_refill(kafka, tmp_path, last_apart=last_apart)
    sink = MemorySink()
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}")
    with anyio.fail_after(DEADLINE), pytest.raises(OffsetGapError) as caught:
        await build(source, sink, database).run()
    assert (caught.value.kind, caught.value.offset, sink.values) == ("replaced", 300, [])
    assert str(caught.value) == (
        f"topic {topic!r} partition 0: checkpointed offset 300 follows a record (offset 299) "
        "that is not the one this pipeline read there (the broker keeps offsets 0..500): the "
        "topic was probably deleted and recreated, and already holds more records than the "
        "checkpoint counted; set on_gap='skip' to count the gap and resume at offset 0"
    )
    assert {f"{topic}:0": 300} == dict(stored(database).positions)


async def test_on_gap_skip_reads_a_refilled_topic_from_its_start(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """With on_gap='skip' the replaced partition is counted and read whole from offset 0."""
    topic, database = await first_run_then_refill(kafka, tmp_path)
    sink = MemorySink()
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}", on_gap="skip")
    report = await run_until(build(source, sink, database), sink, 500)
    assert ({"offset_gaps": 1}, list(range(1000, 1500)), {f"{topic}:0": 500}) == (
        dict(report.source_outcomes),
        sorted(value["id"] for value in sink.values),
        dict(report.positions),
    )


async def test_a_topic_that_only_grew_resumes_after_the_record_it_checks(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """The same topic with 200 more records: the record before the position matches, and
    exactly the 200 new ones are read (the one read to check is not handed out again)."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, orders(300))
    database = tmp_path / "checkpoints.db"
    group = f"g-{uuid.uuid4().hex}"
    first = MemorySink()
    await run_until(build(make_source(kafka, topic, group), first, database), first, 300)
    identity = stored(database).identities[f"{topic}:0"]
    assert identity.partition(":")[0].isdigit()
    assert len(identity.partition(":")[2]) == 16
    await kafka.produce(topic, orders(200, prefix="m"))
    second = MemorySink()
    fresh_group = f"g-{uuid.uuid4().hex}"  # the checkpoint alone says where to resume
    report = await run_until(
        build(make_source(kafka, topic, fresh_group), second, database), second, 200
    )
    assert (dict(report.positions), len(second.values)) == ({f"{topic}:0": 500}, 200)
    assert dict(report.source_outcomes) == {}
