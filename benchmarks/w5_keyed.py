"""W5 for the suite: a keyed running count, Kafka -> Kafka, one implementation per process.

The input is W1's records (:func:`benchmarks.bench_memory.make_records`) keyed
by their ``user`` field: 10,000 distinct users drawn at random, so at
1,000,000 records each user has about 100 and at 200,000 about 20. Before
the clock starts the child creates a source topic of 4 partitions and an
output topic (fresh, so runs on one broker cannot interfere) and produces the
records as a real producer would: keyed by user, partitioned by the key
(murmur2), in producer batches of up to 256 KiB. Every implementation reads
every record, parses it, adds one to its user's count and writes
``{"user": ..., "count": n}`` under the same key to the output topic.

* **raw** (the limit): a raw aiokafka loop, ``getmany``, parse, count in a
  ``dict``, one closed ``send_batch`` per partition, wait for the acks,
  commit, with riprap's client and loop settings
  (:func:`benchmarks.bench_kafka.riprap_settings`). The counts live in
  process memory and are never saved: the floor of the work, not a
  durable implementation.
* **riprap**: the pipeline as the state guide writes it, every option at its
  default: ``KafkaSource`` -> ``.map("count", count, state=SqliteStore(dir))``
  -> ``KafkaSink`` (JSON, key partitioner), SQLite checkpoints. The counts are
  on disk, one SQLite database per partition, committed at each checkpoint
  together with the positions.
* **riprap changelog**: the same as it scales out: positions in the group's
  offsets (``KafkaCheckpoints``), every change also in a changelog topic
  (``KafkaChangelog``), the SQLite databases its local copy: the durability
  the peers give.
* **quixstreams**, **faust**: the peers of :mod:`benchmarks.w5_peers` (RocksDB
  state with changelog topics).

The clock is split for raw and riprap as in W2
(:class:`benchmarks.bench_kafka.Timing`: ``records_per_s`` is the steady rate,
the group join is ``join_s``); a peer's ``seconds`` is its whole run.
``records_per_cpu_s`` divides by the process's CPU time over the whole run
(librdkafka's threads included; the broker runs in a process of its own).

Each run is checked: the group committed every source record, and the output
topic, read to its end, holds one record per input record and, for every
user, exactly the counts 1..n where n is the user's number of input records.

Run: ``python -m benchmarks.w5_keyed [--impl NAME] [--records N] [--bootstrap HOST:PORT] [--json]``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson

from benchmarks import w5_peers
from benchmarks._child import (
    Result,
    as_a_riprap_run_sets,
    child_main,
    make_input,
    peak_rss_mib,
    start_measuring,
)
from benchmarks.bench_kafka import (
    DEADLINE,
    GROUP_TIMEOUTS,
    INPUT_BATCH_BYTES,
    PARTITIONS,
    KafkaJob,
    SplitClock,
    Timing,
    as_figures,
    committed,
    delete_topics,
    raw_clients,
    riprap_settings,
    run_async,
    timed_until_done,
)
from benchmarks.peers import peer_version, require
from benchmarks.w2_kafka import broker

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from riprap.state import State

KEY_FIELD = "user"
"""The record field the input is keyed by: 10,000 distinct values."""


def keys_of(records: list[bytes]) -> list[bytes]:
    """Each record's message key: its user, as bytes."""
    return [orjson.loads(raw)[KEY_FIELD].encode() for raw in records]


TOPIC_CONFIG = {"retention.ms": "604800000", "retention.bytes": "-1"}
"""Every W5 topic's retention, Kafka's defaults, set explicitly: the test broker
describes only the configs a topic was created with, and Quix Streams derives its
changelog topics' retention from the source topic's."""


async def create_topic(bootstrap: str) -> str:
    """A new topic of :data:`PARTITIONS` partitions with :data:`TOPIC_CONFIG`."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"w5-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1, topic_configs=TOPIC_CONFIG)])
    finally:
        await admin.close()
    return name


async def delete_run_topics(job: KafkaJob) -> list[str]:
    """Delete the run's topics: source, output and any a peer made for its group; the latter."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=job.bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if job.group in name]
    finally:
        await admin.close()
    await delete_topics(job.bootstrap, [job.source, job.out, *names])
    return names


async def prepare(bootstrap: str, records: list[bytes], who: str) -> KafkaJob:
    """A fresh source topic holding ``records`` keyed by user; a fresh output topic and group."""
    source = await create_topic(bootstrap)
    await produce_keyed(bootstrap, source, records, keys_of(records))
    out = await create_topic(bootstrap)
    group = f"w5-{who.replace(' ', '-')}-{uuid.uuid4().hex[:8]}"
    return KafkaJob(bootstrap, source, out, group, len(records), len(records))


async def produce_keyed(
    bootstrap: str, topic: str, records: list[bytes], keys: list[bytes]
) -> None:
    """Write the input as a throughput-tuned producer does: keyed by user, batched, acks=all."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=INPUT_BATCH_BYTES
    )
    await producer.start()
    try:
        for start in range(0, len(records), 50_000):  # bounded: 50,000 futures at a time
            futures = [
                await producer.send(topic, value=raw, key=key)
                for raw, key in zip(
                    records[start : start + 50_000], keys[start : start + 50_000], strict=True
                )
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def count(value: bytes, state: State) -> dict[str, Any]:
    """One more record for this key: its user and the running count."""
    n = state.get(0) + 1
    state.set(n)
    return {"user": orjson.loads(value)[KEY_FIELD], "count": n}


def riprap_pipeline(job: KafkaJob, directory: str, *, changelog: bool = False) -> Any:
    """The W5 pipeline as the state guide writes it: every option at its default.

    With ``changelog``, as it scales out: positions in the group's offsets, the
    state in a changelog topic with a local SQLite copy (what the peers keep).
    """
    import riprap
    from riprap.connectors.kafka import KafkaChangelog, KafkaCheckpoints, KafkaSink, KafkaSource
    from riprap.state import SqliteStore

    source = KafkaSource(
        job.source,
        bootstrap_servers=job.bootstrap,
        group_id=job.group,
        consumer_options=GROUP_TIMEOUTS,
    )
    if changelog:
        pipeline = riprap.Pipeline(
            job.group,
            checkpoint=KafkaCheckpoints(source),
            changelog=KafkaChangelog(job.bootstrap, topic=f"{job.group}-changelog"),
        )
    else:
        pipeline = riprap.Pipeline(
            job.group, checkpoint_path=os.path.join(directory, "checkpoints.db")
        )
    return (
        pipeline.source(source)
        .map("count", count, state=SqliteStore(os.path.join(directory, "state")))
        .sink(KafkaSink(job.out, bootstrap_servers=job.bootstrap))
    )


async def riprap_run(job: KafkaJob, changelog: bool = False) -> Timing:
    """The pipeline with its state and checkpoints in a temporary directory, until all is done."""
    with tempfile.TemporaryDirectory(prefix="w5-riprap-") as directory:
        pipeline = riprap_pipeline(job, directory, changelog=changelog)
        return await timed_until_done(pipeline, job.records)


async def raw_loop(job: KafkaJob) -> Timing:
    """getmany, parse, count in a dict, one closed batch per partition, acks, commit: the limit."""

    settings = riprap_settings()
    clock = SplitClock()
    consumer, producer = raw_clients(job, settings)
    await consumer.start()
    await producer.start()
    counts: dict[bytes, int] = {}
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
                futures += await _send_counts(producer, job.out, tp.partition, messages, counts)
            await asyncio.gather(*futures)
            if fetched:
                await consumer.commit()
        clock.mark()
    finally:
        await consumer.stop()
        await producer.stop()
    return clock.timing()


async def _send_counts(
    producer: Any, topic: str, partition: int, messages: list[Any], counts: dict[bytes, int]
) -> list[asyncio.Future[Any]]:
    loads, dumps = orjson.loads, orjson.dumps
    futures = []
    builder = producer.create_batch()
    for message in messages:
        key = message.key
        n = counts.get(key, 0) + 1
        counts[key] = n
        value = dumps({"user": loads(message.value)[KEY_FIELD], "count": n})
        if builder.append(key=key, value=value, timestamp=None) is None:
            builder.close()
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None)
    if builder.record_count():
        builder.close()
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures


async def read_counts(job: KafkaJob, *, quiet: float = 1.0) -> tuple[Counter[str], dict[str, int]]:
    """The output topic read to its end: records per user, and each user's highest count.

    The end is where nothing more arrives for ``quiet`` seconds after the
    expected number of records (so a duplicate is counted too), or for
    ``10 * quiet`` before it (the test broker's end offsets cannot be used).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    seen: Counter[str] = Counter()
    highest: dict[str, int] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=job.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(job.out, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        total, last = 0, time.monotonic()
        while time.monotonic() - last < (quiet if total >= job.expected else 10 * quiet):
            fetched = await consumer.getmany(timeout_ms=round(quiet * 250), max_records=10_000)
            for messages in fetched.values():
                total += len(messages)
                for message in messages:
                    out = orjson.loads(message.value)
                    seen[out["user"]] += 1
                    highest[out["user"]] = max(highest.get(out["user"], 0), out["count"])
            if fetched:
                last = time.monotonic()
    finally:
        await consumer.stop()
    return seen, highest


def check(name: str, expected: Counter[str], seen: Counter[str], highest: dict[str, int]) -> None:
    """Stop with the difference unless every user has exactly its counts 1..n in the output."""
    if sum(seen.values()) != sum(expected.values()):
        raise SystemExit(f"{name} wrote {sum(seen.values())} records, expected {expected.total()}")
    wrong = [user for user in expected if not seen[user] == highest.get(user) == expected[user]]
    if wrong or len(seen) != len(expected):
        user = wrong[0] if wrong else next(iter(seen.keys() - expected.keys()))
        raise SystemExit(
            f"{name}: user {user!r} has {seen[user]} outputs up to count "
            f"{highest.get(user)}, expected {expected[user]} ({len(wrong)} users wrong)"
        )


def _run_raw(job: KafkaJob) -> dict[str, Any]:
    as_a_riprap_run_sets()
    return as_figures(job.records, run_async(raw_loop, job))


def _run_riprap(job: KafkaJob) -> dict[str, Any]:
    return as_figures(job.records, run_async(riprap_run, job))


def _run_riprap_changelog(job: KafkaJob) -> dict[str, Any]:
    return as_figures(job.records, run_async(riprap_run, job, True))


def _peer(run: Callable[[KafkaJob], str]) -> Callable[[KafkaJob], dict[str, Any]]:
    def timed(job: KafkaJob) -> dict[str, Any]:
        cpu = time.process_time()
        state = run(job)
        cpu = time.process_time() - cpu
        per_cpu_s = round(job.records / cpu) if cpu > 0 else 0
        return {"state": state, "cpu_s": round(cpu, 3), "records_per_cpu_s": per_cpu_s}

    return timed


RUNS: dict[str, Callable[[KafkaJob], dict[str, Any]]] = {
    "raw": _run_raw,
    "riprap": _run_riprap,
    "riprap changelog": _run_riprap_changelog,
    **{name: _peer(run) for name, run in w5_peers.RUNS.items()},
}
"""Each implementation's run and its figures (split timings; for a peer, where its state lived)."""
PACKAGES = {
    "raw": "aiokafka",
    "riprap": "riprap",
    "riprap changelog": "riprap",
    **w5_peers.PACKAGES,
}


def measure(name: str, args: argparse.Namespace) -> Result:
    """Produce the input, then time one run of implementation ``name`` and check its output."""
    require("aiokafka", "aiokafka")
    if name in w5_peers.MODULES:
        require(w5_peers.MODULES[name], w5_peers.PACKAGES[name])
    records = make_input(args.records)
    expected = Counter(orjson.loads(raw)[KEY_FIELD] for raw in records)
    with broker(args.bootstrap) as bootstrap:
        job = run_async(prepare, bootstrap, records, name)
        del records
        try:
            rss_start = start_measuring()
            started = time.perf_counter()
            figures = RUNS[name](job)
            seconds = time.perf_counter() - started
            peak = peak_rss_mib()
            seen, highest = run_async(read_counts, job)
            done = run_async(committed, job)
        finally:
            made = run_async(delete_run_topics, job)
    check(name, expected, seen, highest)
    if done != job.records:
        raise SystemExit(f"{name} committed {done} of {job.records} source records")
    return {
        "seconds": figures.pop("seconds", seconds),
        "clock": "whole run" if name in w5_peers.RUNS else "steady",
        **figures,
        "count": sum(seen.values()),
        "keys": len(seen),
        "changelogs": sum("changelog" in topic for topic in made),
        "committed": done,
        "rss_start_mib": round(rss_start, 1),
        "peak_rss_mib": peak,
        "version": peer_version(PACKAGES[name]),
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="host:port of the broker (default: start one)")


IMPLEMENTATIONS = {name: functools.partial(measure, name) for name in RUNS}


def main(argv: list[str] | None = None) -> None:
    child_main(
        __doc__, IMPLEMENTATIONS, argv, default_records=1_000_000, add_arguments=_add_arguments
    )


if __name__ == "__main__":
    main()
