"""W5 (a keyed running count, Kafka -> Kafka) written for other Python stream processors.

Each peer is written the way its documentation shows: it reads every message
of the source topic (keyed by user), adds one to the count its state keeps
for the message's key and writes ``{"user": ..., "count": n}`` under the same
key to the output topic; the child (:mod:`benchmarks.w5_keyed`) then checks
every user's counts and the group's committed offsets. Both keep their state
in RocksDB on local disk, backed by a compacted changelog topic per store,
as they do by default; the Tansu test broker creates those topics, and
neither peer needs the transactions or idempotent producers it lacks, so
every peer runs at least once.

* **Quix Streams**: ``Application(broker_address=..., consumer_group=...,
  processing_guarantee="at-least-once", state_dir=...)``, a JSON source
  topic (orjson), ``sdf.apply(count, stateful=True)`` whose function reads
  and writes the key's ``State`` (RocksDB, with its changelog topic), then
  ``to_topic``; ``app.run(count=...)`` stops after the expected outputs and
  commits (the state and its changelog included) on the way out.
* **Faust** (faust-streaming): an ``App`` with ``store="rocksdb://"`` (the
  store its documentation recommends for production; faust-streaming opens
  it with ``rocksdict``, installed with Quix Streams) and a ``Table`` with
  ``default=int`` backed by its changelog topic; an agent over the source
  topic adds one to ``table[key]`` and sends the result with
  ``await topic.send()``. The agent stops the worker with SIGTERM once it has
  sent every expected record, and the worker commits on the way out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any

import orjson

from benchmarks.bench_kafka import DEADLINE, PARTITIONS
from benchmarks.peers import require
from benchmarks.w2_peers import GROUP_TIMEOUTS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from benchmarks.bench_kafka import KafkaJob

# The ignores below cover type-checking without the peers installed.

FAUST_DEADLINE = 1.5 * DEADLINE
"""Seconds a Faust run may take: about 2,000 records/s here, 1,000,000 take some 520 s."""


def quix_count(order: dict[str, Any], state: Any) -> dict[str, Any]:
    """One more record for this key (Quix Streams' ``State`` of the message key)."""
    n = state.get("count", 0) + 1
    state.set("count", n)
    return {"user": order["user"], "count": n}


def run_quixstreams(job: KafkaJob) -> str:
    """Run a Quix Streams application until it has produced one output per input record."""
    require("quixstreams", "quixstreams")
    from quixstreams import Application  # type: ignore[import-not-found,unused-ignore]

    with tempfile.TemporaryDirectory(prefix="w5-quix-") as state:
        app = Application(
            broker_address=job.bootstrap,
            consumer_group=job.group,
            auto_offset_reset="earliest",
            processing_guarantee="at-least-once",  # exactly-once needs transactions
            consumer_extra_config=GROUP_TIMEOUTS,
            state_dir=state,
            loglevel="WARNING",
        )
        source = app.topic(job.source, value_deserializer="json")
        out = app.topic(job.out, value_serializer="json")
        counts = app.dataframe(source)
        counts = counts.apply(quix_count, stateful=True)
        counts.to_topic(out)
        app.run(count=job.expected, timeout=DEADLINE, collect=False)
    return "rocksdb + changelog"


def run_faust(job: KafkaJob) -> str:
    """Run a Faust worker whose agent counts in a Table and stops it once every record is sent."""
    require("faust", "faust-streaming")
    import faust  # type: ignore[import-not-found,unused-ignore]

    asyncio.set_event_loop(asyncio.new_event_loop())  # the worker runs the current loop
    with tempfile.TemporaryDirectory(prefix="w5-faust-") as datadir:
        app = faust.App(
            job.group,
            broker=f"kafka://{job.bootstrap}",
            key_serializer="raw",
            value_serializer="raw",
            store="rocksdb://",
            datadir=datadir,
            topic_partitions=PARTITIONS,
            broker_session_timeout=GROUP_TIMEOUTS["session.timeout.ms"] / 1000,
            broker_heartbeat_interval=GROUP_TIMEOUTS["heartbeat.interval.ms"] / 1000,
            web_enabled=False,
        )
        source = app.topic(job.source)
        out = app.topic(job.out)
        schema = faust.Schema(key_serializer="raw", value_serializer="json")  # bytes -> int
        counts = app.Table("counts", default=int, partitions=PARTITIONS, schema=schema)
        app.agent(source, name="w5")(_faust_agent(job, out, counts))
        # The worker's banner and spinner go to stderr: stdout carries the child's result.
        worker = faust.Worker(app, loglevel="WARNING", stdout=sys.stderr, redirect_stdouts=False)
        _run_worker(worker, FAUST_DEADLINE)
    return "rocksdb + changelog"


def _faust_agent(job: KafkaJob, out: Any, counts: Any) -> Any:
    sent = 0

    async def process(stream: AsyncIterator[tuple[bytes, bytes]]) -> None:
        nonlocal sent
        async for key, value in stream.items():  # type: ignore[attr-defined]
            counts[key] += 1
            result = {"user": orjson.loads(value)["user"], "count": counts[key]}
            await out.send(key=key, value=orjson.dumps(result))
            sent += 1
            if sent == job.expected:
                os.kill(os.getpid(), signal.SIGTERM)

    return process


def _run_worker(worker: Any, deadline: float) -> None:
    """Run a Faust worker to its end; SIGTERM it after ``deadline`` seconds if it is stuck."""
    watchdog = threading.Timer(deadline, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.start()
    try:
        worker.execute_from_commandline()
    except SystemExit as end:
        if end.code not in (0, None):
            raise
    finally:
        watchdog.cancel()


RUNS = {"quixstreams": run_quixstreams, "faust": run_faust}
"""Each peer's run; it returns where the peer kept its state."""
PACKAGES = {"quixstreams": "quixstreams", "faust": "faust-streaming"}
MODULES = {"quixstreams": "quixstreams", "faust": "faust"}
