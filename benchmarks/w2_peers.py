"""W2 (Kafka -> transform -> Kafka) written for other Python stream processors.

Each peer is written the way its documentation shows and does W1's work on
every message of the source topic, writing what survives to the output topic;
the child (:mod:`benchmarks.w2_kafka`) then checks the output topic's count and
the group's committed offsets. The broker is the Tansu test broker: consumer
groups and offset commits work, idempotent and transactional producers do not,
so every producer here runs without idempotence and every peer at least once.

* **Bytewax**: ``KafkaSource`` (``tail=False``: the dataflow ends at the end of
  every partition) -> ``map``/``filter`` -> ``KafkaSink``, executed by
  ``bytewax.testing.run_main`` (one worker, as riprap's one event loop). Its
  source assigns partitions itself and keeps offsets in Bytewax's recovery
  store, not in a consumer group: it commits nothing to Kafka.
* **Quix Streams**: ``Application(broker_address=..., consumer_group=...,
  processing_guarantee="at-least-once")``, topics with the JSON (de)serialiser
  (orjson), a ``StreamingDataFrame`` with ``filter`` and ``apply``, then
  ``to_topic``; ``app.run(count=...)`` stops after the expected outputs and
  commits on the way out.
* **Faust** (faust-streaming): an ``App`` with raw serialisers and an agent
  over the source topic that sends each result with ``await topic.send()``;
  the agent stops the worker with SIGTERM (its documented shutdown) once it
  has sent every expected record, and the worker commits on the way out.
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
from benchmarks.bench_memory import add_cents, has_email
from benchmarks.peers import require

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from benchmarks.bench_kafka import KafkaJob

# The ignores below cover type-checking without the peers installed.

GROUP_TIMEOUTS = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 300}
"""The raw loop's and riprap's consumer group timeouts: the test broker holds a
JoinGroup for half the session timeout, 22.5 s at librdkafka's default."""


def bytewax_flow(job: KafkaJob) -> Any:
    """The W2 dataflow: the source topic to its end, W1's steps, the output topic."""
    import bytewax.operators as op  # type: ignore[import-not-found,unused-ignore]
    from bytewax.connectors.kafka import (  # type: ignore[import-not-found,unused-ignore]
        KafkaSink,
        KafkaSinkMessage,
        KafkaSource,
    )
    from bytewax.dataflow import Dataflow  # type: ignore[import-not-found,unused-ignore]

    def parse(message: Any) -> tuple[bytes | None, dict[str, Any]]:
        return message.key, orjson.loads(message.value)

    def serialize(keyed: tuple[bytes | None, dict[str, Any]]) -> Any:
        return KafkaSinkMessage(keyed[0], orjson.dumps(keyed[1]))

    flow = Dataflow("w2_kafka")
    messages = op.input("in", flow, KafkaSource([job.bootstrap], [job.source], tail=False))
    orders = op.map("parse", messages, parse)
    orders = op.filter("has_email", orders, lambda keyed: has_email(keyed[1]))
    orders = op.map("add_cents", orders, lambda keyed: (keyed[0], add_cents(keyed[1])))
    op.output("out", op.map("serialize", orders, serialize), KafkaSink([job.bootstrap], job.out))
    return flow


def run_bytewax(job: KafkaJob) -> bool:
    """Run the dataflow with one worker until every partition is read; no group commits."""
    require("bytewax", "bytewax")
    from bytewax.testing import run_main  # type: ignore[import-not-found,unused-ignore]

    run_main(bytewax_flow(job))
    return False


def run_quixstreams(job: KafkaJob) -> bool:
    """Run a Quix Streams application until it has produced every expected record."""
    require("quixstreams", "quixstreams")
    from quixstreams import Application  # type: ignore[import-not-found,unused-ignore]

    with tempfile.TemporaryDirectory(prefix="w2-quix-") as state:
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
        orders = app.dataframe(source)
        orders = orders.filter(has_email)
        orders = orders.apply(add_cents)
        orders.to_topic(out)
        app.run(count=job.expected, timeout=DEADLINE, collect=False)
    return True


def run_faust(job: KafkaJob) -> bool:
    """Run a Faust worker whose agent stops it once every expected record is sent."""
    require("faust", "faust-streaming")
    import faust  # type: ignore[import-not-found,unused-ignore]

    asyncio.set_event_loop(asyncio.new_event_loop())  # the worker runs the current loop
    app = faust.App(
        job.group,
        broker=f"kafka://{job.bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        topic_partitions=PARTITIONS,
        broker_session_timeout=GROUP_TIMEOUTS["session.timeout.ms"] / 1000,
        broker_heartbeat_interval=GROUP_TIMEOUTS["heartbeat.interval.ms"] / 1000,
        web_enabled=False,
    )
    source = app.topic(job.source)
    out = app.topic(job.out)
    sent = 0

    async def process(stream: AsyncIterator[tuple[bytes, bytes]]) -> None:
        nonlocal sent
        async for key, value in stream.items():  # type: ignore[attr-defined]
            order = orjson.loads(value)
            if not has_email(order):
                continue
            await out.send(key=key, value=orjson.dumps(add_cents(order)))
            sent += 1
            if sent == job.expected:
                os.kill(os.getpid(), signal.SIGTERM)

    app.agent(source, name="w2")(process)
    # The worker's banner and spinner go to stderr: stdout carries the child's result.
    _run_worker(faust.Worker(app, loglevel="WARNING", stdout=sys.stderr, redirect_stdouts=False))
    return True


def _run_worker(worker: Any) -> None:
    """Run a Faust worker to its end; SIGTERM it after ``DEADLINE`` seconds if it is stuck."""
    watchdog = threading.Timer(DEADLINE, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.start()
    try:
        worker.execute_from_commandline()
    except SystemExit as end:
        if end.code not in (0, None):
            raise
    finally:
        watchdog.cancel()


RUNS = {"bytewax": run_bytewax, "quixstreams": run_quixstreams, "faust": run_faust}
"""Each peer's run; it returns whether the peer commits its offsets to a consumer group."""
PACKAGES = {"bytewax": "bytewax", "quixstreams": "quixstreams", "faust": "faust-streaming"}
MODULES = {"bytewax": "bytewax", "quixstreams": "quixstreams", "faust": "faust"}
