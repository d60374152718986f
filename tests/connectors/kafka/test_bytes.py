"""KafkaSource and the bound in bytes: batches weigh their records and end at the byte limit.

Each record weighs its serialized key and value (plus 2), as aiokafka measured
them off the wire; the pipeline's ``max_in_flight_bytes`` then holds for Kafka
records as it does for files.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

pytest.importorskip("aiokafka")

from riprap import SourceBatch, SourceContext
from riprap.connectors.kafka import KafkaSource
from riprap.testing import wait_until
from tests._sinks import GatedSink
from tests._sources import Weighed, bounded_in_bytes, settle

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from .conftest import KafkaHelper, Message

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

KIB = 1024
VALUE = 100 * KIB
WEIGHT = len(b"k00") + VALUE + 2
"""What one test record weighs: its 3-byte key, its value and the 2 every record counts."""


def heavy(count: int) -> list[Message]:
    """``count`` records of a 3-byte key and a 100 KiB value that starts with the index."""
    return [(f"k{i:02}".encode(), f"{i:06}".encode().ljust(VALUE, b"."), []) for i in range(count)]


def make_source(kafka: KafkaHelper, topic: str) -> KafkaSource:
    """A source on ``topic`` in a group of its own, with the fast test group settings."""
    return KafkaSource(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=f"g-{uuid.uuid4().hex}",
        consumer_options=FAST_GROUP,
    )


async def read_all(source: KafkaSource, count: int, max_records: int) -> list[SourceBatch]:
    """Batches read until ``count`` records came (bounded in reads and time)."""
    batches: list[SourceBatch] = []
    with anyio.fail_after(30):
        while sum(map(len, batches)) < count:
            batch = await source.read(max_records)
            assert batch is not None
            batches.append(batch)
            assert len(batches) <= count
    return batches


async def test_a_batch_ends_with_the_record_that_reaches_the_byte_limit(
    kafka: KafkaHelper,
) -> None:
    """Limit 250,000 bytes: three records a batch (two weigh less), each batch's weight said."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, heavy(12))
    source = make_source(kafka, topic)
    await source.open(SourceContext(pipeline="p", positions={}, max_batch_bytes=250_000))
    try:
        batches = await read_all(source, 12, max_records=100)
    finally:
        await source.aclose()
    assert [3, 3, 3, 3] == [len(b) for b in batches]
    assert [3 * WEIGHT] * 4 == [b.nbytes for b in batches]
    assert list(range(12)) == [int(v[:6]) for b in batches for v in b.values]


async def test_a_record_heavier_than_the_limit_goes_alone(kafka: KafkaHelper) -> None:
    """Limit 10 KiB, records of 100 KiB: one record a batch, none held back or split."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, heavy(5))
    source = make_source(kafka, topic)
    await source.open(SourceContext(pipeline="p", positions={}, max_batch_bytes=10 * KIB))
    try:
        batches = await read_all(source, 5, max_records=100)
    finally:
        await source.aclose()
    assert [(1, WEIGHT)] * 5 == [(len(b), b.nbytes) for b in batches]


async def test_without_a_byte_limit_batches_are_cut_by_count_and_still_weighed(
    kafka: KafkaHelper,
) -> None:
    """No limit: batches of ``max_records``, each weighing what it holds (null keys weigh 0)."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, [(None, b"x" * 10, []) for _ in range(9)])
    source = make_source(kafka, topic)
    await source.open(SourceContext(pipeline="p", positions={}))
    try:
        batches = await read_all(source, 9, max_records=4)
    finally:
        await source.aclose()
    assert sum(map(len, batches)) == 9
    assert all(len(b) <= 4 for b in batches)
    assert [len(b) * 11 for b in batches] == [b.nbytes for b in batches]


async def test_a_pipeline_reads_no_more_than_its_bytes_in_flight(kafka: KafkaHelper) -> None:
    """40 records of 100 KiB behind a stalled sink, ``max_in_flight_bytes`` 1 MiB: reading
    stops with the batch that reaches 1 MiB (every record, 4 MiB, was read before); once the
    sink moves, all 40 arrive in order and their positions are kept.
    """
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, heavy(40))
    source = Weighed(make_source(kafka, topic))
    weights = source.weights
    sink = GatedSink()
    async with bounded_in_bytes("kafka-bytes", source, sink, 1024 * KIB).open() as running:
        await wait_until(lambda: sum(weights) >= 1024 * KIB, what="1 MiB read", timeout=30)
        await settle()
        await anyio.sleep(0.3)  # and a few polls of the broker
        assert sum(weights[:-1]) < 1024 * KIB <= sum(weights)
        assert all(w <= 2 * WEIGHT for w in weights)  # batches end at 128 KiB
        sink.gate.set()
        await wait_until(lambda: len(sink.values) >= 40, what="40 records written", timeout=30)
        running.stop()
        report = await running.wait()
    assert list(range(40)) == [int(v[:6]) for v in sink.values]
    assert {f"{topic}:0": 40} == report.positions
