"""Bounded KafkaSource runs against the test broker: ``start_at`` and ``stop_at``."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

pytest.importorskip("aiokafka")

import riprap
import riprap.checkpoints
from riprap import ConfigError, SourceBatch, SourceContext
from riprap.connectors.kafka import KafkaSource
from riprap.connectors.memory import MemorySink

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import KafkaHelper, Message

pytestmark = pytest.mark.anyio

DEADLINE = 60.0
BASE = datetime(2026, 1, 1, tzinfo=UTC)
"""Event time of the first stamped test record; record ``i`` is stamped ``i`` seconds later."""


async def produce_stamped(kafka: KafkaHelper, topic: str, count: int, partitions: int) -> None:
    """Values ``b"0"``.. ``count - 1``; record ``i`` is stamped ``BASE + i`` seconds."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, enable_idempotence=False, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        stamp = int(BASE.timestamp() * 1000)
        futures = [
            await producer.send(
                topic, str(i).encode(), partition=i % partitions, timestamp_ms=stamp + i * 1000
            )
            for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce(kafka: KafkaHelper, topic: str, values: range) -> None:
    """One message per value, produced in small rounds so partitions hold several batches."""
    items: list[Message] = [(None, str(i).encode(), []) for i in values]
    for first in range(0, len(items), 25):
        await kafka.produce(topic, items[first : first + 25])


def source(kafka: KafkaHelper, topic: str, **options: Any) -> KafkaSource:
    """A source on ``topic`` with the fast test group settings."""
    options.setdefault("group_id", f"g-{uuid.uuid4().hex}")
    return KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, consumer_options=FAST_GROUP, **options
    )


def pipeline(tmp_path: Path, kafka_source: KafkaSource, sink: MemorySink) -> riprap.Pipeline:
    """``kafka_source`` -> ``sink``, checkpointed to SQLite under ``tmp_path``."""
    return (
        riprap.Pipeline(
            "bounded",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(tmp_path / "checkpoints.db"),
            checkpoint_interval=0.2,
        )
        .source(kafka_source)
        .sink(sink)
    )


async def run_bounded(
    tmp_path: Path, kafka_source: KafkaSource
) -> tuple[riprap.RunReport, list[int]]:
    """Run to its own end (failing after ``DEADLINE``); the report and the values written."""
    sink = MemorySink()
    with anyio.fail_after(DEADLINE):
        report = await pipeline(tmp_path, kafka_source, sink).run()
    return report, sorted(int(value) for value in sink.values)


async def read_to_end(kafka_source: KafkaSource) -> list[SourceBatch]:
    """Every batch until the source returns ``None`` (bounded in reads and time)."""
    batches: list[SourceBatch] = []
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        assert time.monotonic() < deadline, "the bounded source did not end"
        batch = await kafka_source.read(50)
        if batch is None:
            return batches
        batches.append(batch)
    raise AssertionError("the bounded source did not end")


@pytest.mark.kafka
async def test_stop_at_end_run_ends_by_itself_with_every_record(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """A ``stop_at="end"`` run processes every record, commits the ends and reports completed."""
    topic = await kafka.create_topic(4)
    await produce(kafka, topic, range(200))
    group = f"g-{uuid.uuid4().hex}"

    report, values = await run_bounded(
        tmp_path, source(kafka, topic, group_id=group, stop_at="end")
    )

    assert list(range(200)) == values
    assert "completed" == report.outcome
    assert 200 == report.records_in
    assert "pipeline bounded: completed" in report.format()
    committed = await kafka.committed(topic, group)
    assert 200 == sum(committed.values())


@pytest.mark.kafka
async def test_stop_at_end_leaves_records_written_after_the_start(kafka: KafkaHelper) -> None:
    """Records written after the run started are left for the next run."""
    topic = await kafka.create_topic(1)
    await produce(kafka, topic, range(30))
    bounded = source(kafka, topic, group_id=None, stop_at="end")
    await bounded.open(SourceContext(pipeline="p", positions={}))
    try:
        first = await bounded.read(10)
        await produce(kafka, topic, range(30, 40))
        rest = await read_to_end(bounded)
    finally:
        await bounded.aclose()
    assert first is not None
    assert [str(i).encode() for i in range(30)] == [
        v for batch in (first, *rest) for v in batch.values
    ]


@pytest.mark.kafka
async def test_stop_at_end_of_empty_partitions_ends_at_once(kafka: KafkaHelper) -> None:
    """A bounded source over empty partitions ends without handing anything out."""
    topic = await kafka.create_topic(3)
    bounded = source(kafka, topic, stop_at="end")
    await bounded.open(SourceContext(pipeline="p", positions={}))
    try:
        batches = await read_to_end(bounded)
    finally:
        await bounded.aclose()
    assert [] == batches


@pytest.mark.kafka
async def test_time_window_reads_exactly_the_records_stamped_inside(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """``start_at``..``stop_at`` times hand out the records stamped in [start, stop) only."""
    topic = await kafka.create_topic(2)
    await produce_stamped(kafka, topic, 40, partitions=2)
    window = source(
        kafka,
        topic,
        group_id=None,
        start_at=BASE + timedelta(seconds=10),
        stop_at=BASE + timedelta(seconds=25),
    )

    report, values = await run_bounded(tmp_path, window)

    assert list(range(10, 25)) == values
    assert "completed" == report.outcome


@pytest.mark.kafka
async def test_a_checkpointed_position_wins_over_start_at(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """A second run under the same name resumes at its checkpoint, not at ``start_at``."""
    topic = await kafka.create_topic(2)
    await produce(kafka, topic, range(50))
    _, first = await run_bounded(
        tmp_path, source(kafka, topic, group_id=None, start_at="earliest", stop_at="end")
    )
    await produce(kafka, topic, range(50, 80))

    _, second = await run_bounded(
        tmp_path, source(kafka, topic, group_id=None, start_at="earliest", stop_at="end")
    )

    assert (list(range(50)), list(range(50, 80))) == (first, second)


@pytest.mark.kafka
async def test_backfill_copy_reads_its_window_without_a_group(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """``backfill(start, stop)`` reads the window with no group: the live group has no offsets."""
    topic = await kafka.create_topic(2)
    await produce_stamped(kafka, topic, 20, partitions=2)
    group = f"g-{uuid.uuid4().hex}"
    live = source(kafka, topic, group_id=group)

    copy = live.backfill(BASE + timedelta(seconds=5), BASE + timedelta(seconds=8))
    _, values = await run_bounded(tmp_path, copy)

    assert (None, [5, 6, 7]) == (copy.group_id, values)
    assert {} == await kafka.committed(topic, group, partitions=2)


@pytest.mark.kafka
async def test_a_missing_topic_is_named(kafka: KafkaHelper) -> None:
    """A bounded source on a topic that does not exist fails naming it."""
    bounded = source(kafka, "no-such-topic-here", stop_at="end")
    with pytest.raises(ConfigError, match="no-such-topic-here"):
        await bounded.open(SourceContext(pipeline="p", positions={}))
    await bounded.aclose()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("start_at", datetime(2026, 1, 1)),  # the naive datetime under test
        ("stop_at", datetime(2026, 1, 1)),  # the naive datetime under test
        ("start_at", "beginning"),
        ("stop_at", "latest"),
    ],
)
def test_bad_bounds_are_config_errors(option: str, value: Any) -> None:
    """A naive datetime or an unknown name is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match=option):
        KafkaSource("t", bootstrap_servers="127.0.0.1:1", group_id=None, **{option: value})


@pytest.mark.kafka
async def test_a_group_member_starts_new_partitions_at_the_start_time(kafka: KafkaHelper) -> None:
    """An unbounded group member with a start time skips what was stamped before it."""
    topic = await kafka.create_topic(1)
    await produce_stamped(kafka, topic, 20, partitions=1)
    member = source(kafka, topic, start_at=BASE + timedelta(seconds=12))
    await member.open(SourceContext(pipeline="p", positions={}))
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + DEADLINE
        while len(values) < 8 and time.monotonic() < deadline:
            batch = await member.read(50)
            assert batch is not None
            values.extend(batch.values)
    finally:
        await member.aclose()
    assert [str(i).encode() for i in range(12, 20)] == values
