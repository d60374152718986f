"""Orders from one Kafka topic to another, with checkpoints and a dead-letter queue.

Produces synthetic orders (about 1% of them malformed JSON) to the topic
``orders``, then runs::

    Kafka "orders" -> decode (JSON) -> validate -> add_cents -> Kafka "orders-priced"

with SQLite checkpoints in ``<data-dir>/checkpoints.db`` and dead letters in
``<data-dir>/dlq.jsonl``. A Kafka topic never ends, so the example stops the
pipeline once every order it produced has been written or dead-lettered (or
after ``--timeout`` seconds) and prints the run report. The consumer group's
committed offsets follow the checkpoints.

It needs a Kafka-protocol broker; the bootstrap address comes from
``RIPRAP_KAFKA_BOOTSTRAP`` (default ``127.0.0.1:9092``)::

    python examples/kafka_orders.py [--count 10000] [--data-dir riprap-kafka]

Run it again: the same group resumes after the orders already done, so only
the newly produced orders are processed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.kafka import KafkaSink, KafkaSource, json_value

BOOTSTRAP = os.environ.get("RIPRAP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
SOURCE_TOPIC = "orders"
OUTPUT_TOPIC = "orders-priced"
PARTITIONS = 4


def validate(order: dict[str, Any]) -> dict[str, Any]:
    """An order needs an id and a positive amount; anything else is a data error."""
    if not isinstance(order, dict) or "id" not in order:
        raise riprap.DataError("order without an id", reason="validation")
    amount = order.get("amount")
    if not isinstance(amount, int | float) or amount <= 0:
        raise riprap.DataError(f"bad amount {amount!r}", reason="validation")
    return order


def add_cents(order: dict[str, Any]) -> dict[str, Any]:
    """Add the amount in cents."""
    return {**order, "amount_cents": round(order["amount"] * 100)}


def build_pipeline(data_dir: Path) -> riprap.Pipeline:
    """The pipeline: decode, validate and price orders from Kafka to Kafka."""
    return (
        riprap.Pipeline(
            "kafka-orders",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(data_dir / "checkpoints.db"),
            checkpoint_interval=1.0,
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(data_dir / "dlq.jsonl"),
        )
        .source(
            KafkaSource(SOURCE_TOPIC, bootstrap_servers=BOOTSTRAP, group_id="riprap-kafka-orders")
        )
        .map("decode", json_value)
        .map("validate", validate)
        .map("add_cents", add_cents)
        .sink(KafkaSink(OUTPUT_TOPIC, bootstrap_servers=BOOTSTRAP, key=lambda o: str(o["id"])))
    )


async def create_topics() -> None:
    """Create both topics unless they exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        for topic in (SOURCE_TOPIC, OUTPUT_TOPIC):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


async def produce_orders(count: int, seed: int) -> None:
    """Produce ``count`` orders keyed by id; about 1% are cut-off JSON."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i in range(count):
            order_id = f"{seed}-{i}"
            value = orjson.dumps({"id": order_id, "amount": round(rng.uniform(1, 500), 2)})
            if rng.random() < 0.01:
                value = value[: len(value) // 2]  # a truncated message
            futures.append(await producer.send(SOURCE_TOPIC, value, key=order_id.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def main(count: int, data_dir: Path, run_for: float) -> riprap.RunReport:
    """Produce, run until every produced order is done (or ``run_for`` seconds), report."""
    await create_topics()
    seed = time.time_ns()
    await produce_orders(count, seed)
    async with build_pipeline(data_dir).open() as running:
        started = time.monotonic()
        deadline = started + run_for
        waiting_said = False
        while time.monotonic() < deadline:
            stats = running.statistics()
            if stats.records_out + stats.dead_lettered >= count and stats.in_flight == 0:
                break
            if not waiting_said and stats.records_in == 0 and time.monotonic() - started > 1.0:
                # A consumer joining a group gets its partitions only after the group
                # rebalances, which can take up to the session timeout on a restart.
                print("joining the consumer group; waiting for partitions ...", file=sys.stderr)
                waiting_said = True
            await asyncio.sleep(0.2)
        running.stop()
        return await running.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="orders to produce")
    parser.add_argument("--data-dir", type=Path, default=Path("riprap-kafka"))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to run at most")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(asyncio.run(main(args.count, args.data_dir, args.timeout)).format())
