"""KafkaSource against the test broker: reading, committing, resuming, lag."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("aiokafka")

from riprap import SourceBatch, SourceContext
from riprap.connectors.kafka import KafkaSource, lag_by_partition, partition_lag

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from collections.abc import Collection

    from .conftest import KafkaHelper

pytestmark = pytest.mark.anyio

DEADLINE = 30.0


def make_source(
    kafka: KafkaHelper, topic: str, group: str, max_poll_records: int = 500
) -> KafkaSource:
    """A source on ``topic`` with the fast test group settings."""
    return KafkaSource(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        max_poll_records=max_poll_records,
        consumer_options=FAST_GROUP,
    )


def messages(count: int) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """``count`` keyed messages with one header each."""
    return [(f"k{i}".encode(), f"v{i}".encode(), [("n", str(i).encode())]) for i in range(count)]


async def read_until(source: KafkaSource, count: int, max_records: int = 100) -> list[SourceBatch]:
    """Batches read until ``count`` records have come (bounded in time and reads)."""
    batches: list[SourceBatch] = []
    total = 0
    deadline = time.monotonic() + DEADLINE
    for _ in range(10_000):
        if total >= count or time.monotonic() > deadline:
            break
        batch = await source.read(max_records)
        assert batch is not None
        batches.append(batch)
        total += len(batch)
    return batches


@pytest.mark.kafka
async def test_reads_every_message_with_key_headers_and_offsets(kafka: KafkaHelper) -> None:
    """Every message of a 4-partition topic arrives once, with its key, headers and offset."""
    topic = await kafka.create_topic(4)
    await kafka.produce(topic, messages(200))
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}", max_poll_records=50)
    await source.open(SourceContext(pipeline="p", positions={}))
    try:
        batches = await read_until(source, 200, max_records=30)
    finally:
        await source.aclose()
    seen = {}
    for batch in batches:
        assert batch.offsets is not None
        assert batch.keys is not None
        assert batch.headers is not None
        assert batch.partition.startswith(f"{topic}:")
        assert len(batch) <= 30
        assert batch.offsets[-1] + 1 == batch.end
        for i, value in enumerate(batch.values):
            seen[batch.keys[i]] = (value, list(batch.headers[i]), batch.partition, batch.offsets[i])
    assert {f"k{i}".encode() for i in range(200)} == set(seen)
    for i in range(200):
        value, headers, _, _ = seen[f"k{i}".encode()]
        assert (f"v{i}".encode(), [("n", str(i).encode())]) == (value, headers)
    per_partition: dict[str, list[int]] = {}
    for _, _, partition, offset in seen.values():
        per_partition.setdefault(partition, []).append(offset)
    for offsets in per_partition.values():
        assert list(range(len(offsets))) == sorted(offsets)


@pytest.mark.kafka
async def test_committed_commits_exactly_the_given_positions(kafka: KafkaHelper) -> None:
    """``committed`` commits the given positions of owned partitions and nothing else."""
    topic = await kafka.create_topic(4)
    await kafka.produce(topic, messages(100))
    group = f"g-{uuid.uuid4().hex}"
    source = make_source(kafka, topic, group)
    await source.open(SourceContext(pipeline="p", positions={}))
    try:
        await read_until(source, 100)
        given = {f"{topic}:0": 3, f"{topic}:2": 5, "other-topic:1": 7}
        await source.committed(given)
    finally:
        await source.aclose()
    assert {f"{topic}:0": 3, f"{topic}:2": 5} == await kafka.committed(topic, group)


@pytest.mark.kafka
async def test_resumes_from_the_checkpointed_position(kafka: KafkaHelper) -> None:
    """A partition with a checkpointed position starts there, ahead of the group offset."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, messages(50))
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}")
    await source.open(SourceContext(pipeline="p", positions={f"{topic}:0": 20}))
    try:
        batches = await read_until(source, 30)
    finally:
        await source.aclose()
    offsets = [offset for batch in batches for offset in batch.offsets or []]
    assert list(range(20, 50)) == offsets


@pytest.mark.kafka
async def test_pauses_a_partition_whose_buffer_is_full(kafka: KafkaHelper) -> None:
    """A partition with ``max_poll_records`` buffered records is paused until drained."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, messages(100))
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}", max_poll_records=20)
    await source.open(SourceContext(pipeline="p", positions={}))
    try:
        first = await source.read(5)
        assert first is not None
        paused_while_buffered = len(source._consumer.paused())
        rest = await read_until(source, 15, max_records=5)
        paused_after_drain = len(source._consumer.paused())
    finally:
        await source.aclose()
    assert (1, 0) == (paused_while_buffered, paused_after_drain)
    assert list(range(20)) == [o for b in [first, *rest] for o in b.offsets or []]


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("options", "held_ms"),
    [
        ({}, 100),
        ({"poll_timeout": 0.25}, 250),
        ({"consumer_options": {**FAST_GROUP, "fetch_max_wait_ms": 40}}, 40),
    ],
)
async def test_the_broker_holds_a_fetch_at_most_the_poll_timeout(
    kafka: KafkaHelper, options: dict[str, Any], held_ms: int
) -> None:
    """The consumer's fetch wait follows ``poll_timeout`` (aiokafka's 500 ms stalls a backlog
    behind caught-up partitions); ``consumer_options`` still sets it."""
    topic = await kafka.create_topic(1)
    settings: dict[str, Any] = {"consumer_options": FAST_GROUP, **options}
    source = KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=f"g-{uuid.uuid4().hex}", **settings
    )
    await source.open(SourceContext(pipeline="p", positions={}))
    try:
        assert held_ms == source._consumer._fetcher._fetch_max_wait_ms
    finally:
        await source.aclose()


@pytest.mark.kafka
async def test_lag_counts_records_not_yet_read(kafka: KafkaHelper) -> None:
    """Lag is reported per assigned partition and falls to (about) zero once read."""
    topic = await kafka.create_topic(2)
    await kafka.produce(topic, messages(60))
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}")
    await source.open(SourceContext(pipeline="p", positions={}))
    try:
        await read_until(source, 60)
        lag = source.lag()
    finally:
        await source.aclose()
    # The broker may report a partition's end as the start of its last batch,
    # so only loose bounds hold here; the arithmetic is tested exactly below.
    assert {f"{topic}:0", f"{topic}:1"} >= set(lag)
    assert all(0 <= behind <= 60 for behind in lag.values())


def test_partition_lag_is_end_minus_position() -> None:
    """The lag of a partition is its end offset minus the next position to read."""
    assert 7 == partition_lag(10, 3)


def test_partition_lag_is_never_negative() -> None:
    """A reported end behind the position counts as caught up."""
    assert 0 == partition_lag(5, 9)


def test_partition_lag_is_unknown_without_end_or_position() -> None:
    """Without an end offset or a position the lag is unknown."""
    assert (None, None) == (partition_lag(None, 3), partition_lag(10, None))


def test_lag_by_partition_leaves_out_unknown_partitions() -> None:
    """Only partitions with both an end and a position are reported."""
    ends = {"t:0": 10, "t:1": None, "t:2": 4}
    positions = {"t:0": 4, "t:1": 2}
    assert {"t:0": 6} == lag_by_partition(ends, positions)


async def revoke_after_first_read(
    source: KafkaSource, context: SourceContext, first: int, rest: int, max_records: int
) -> tuple[SourceBatch, str, list[SourceBatch]]:
    """Open ``source``, read one batch of at most ``first`` records, revoke that batch's
    partition, read ``rest`` records more; the first batch, the other partition, the rest."""
    from aiokafka import TopicPartition

    from riprap.connectors.kafka._source import _Listener

    await source.open(context)
    try:
        batch = await source.read(first)
        assert batch is not None
        topic, _, number = batch.partition.rpartition(":")
        await _Listener(source).on_partitions_revoked([TopicPartition(topic, int(number))])
        others = await read_until(source, rest, max_records=max_records)
    finally:
        await source.aclose()
    return batch, f"{topic}:{1 - int(number)}", others


@pytest.mark.kafka
async def test_revoked_partition_is_dropped_and_drained(kafka: KafkaHelper) -> None:
    """On revocation the partition's waiting records are dropped and the engine drains it."""
    topic = await kafka.create_topic(2)
    await kafka.produce(topic, messages(200))
    drained: list[list[str]] = []

    async def drain(partitions: Collection[str], within: float) -> dict[str, int]:
        drained.append(sorted(partitions))
        return {}

    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}", max_poll_records=500)
    context = SourceContext(pipeline="p", positions={}, drain=drain)
    first, other, rest = await revoke_after_first_read(source, context, 5, 1, 1000)
    assert [[first.partition]] == drained
    assert [other] == [batch.partition for batch in rest]


@pytest.mark.kafka
async def test_a_revoked_partition_gives_back_its_buffered_bytes(kafka: KafkaHelper) -> None:
    """With a byte limit, the bytes a revoked partition had waiting are no longer counted: the
    other partition is read to its end (they would keep the source from polling forever)."""
    from aiokafka import AIOKafkaProducer

    topic = await kafka.create_topic(2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(40):
            await producer.send_and_wait(topic, b"x" * 100_000, partition=i % 2)
    finally:
        await producer.stop()
    source = make_source(kafka, topic, f"g-{uuid.uuid4().hex}")
    context = SourceContext(pipeline="p", positions={}, max_batch_bytes=250_000)
    _, other, rest = await revoke_after_first_read(source, context, 100, 20, 100)
    assert [other] == sorted({batch.partition for batch in rest})
    assert list(range(20)) == [o for b in rest for o in b.offsets or []]
