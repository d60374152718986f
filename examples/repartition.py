"""Orders per customer from a topic keyed by order: re-key through a topic, then count.

Keyed state lives with its source partition, so a count per customer needs
every order of a customer in one partition. The topic ``orders`` is keyed by
order id, so this pipeline re-keys it on the way, with ``.through()``::

    "orders" (by order) -> decode -> "orders-by-customer" (by customer)
        -> parse -> once per order -> count -> "customer-counts"

The first half writes each order under its customer, and Kafka's key
partitioner puts a customer's orders in one partition; the second half reads
that topic in a group of its own, keeps in a changelog which orders it has
counted (the first half, restarted after a crash, writes the orders since its
last checkpoint again: they are dropped here, per customer partition, for a
day) and each customer's count, and writes ``{"customer": ..., "orders": n}``
under the customer. One run runs both halves, each checkpointed in its own
group's offsets.

It needs a Kafka-protocol broker; the bootstrap address comes from
``RIPRAP_KAFKA_BOOTSTRAP`` (default ``127.0.0.1:9092``)::

    python examples/repartition.py [--count 2000] [--timeout 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

import riprap
from riprap.connectors.kafka import (
    KafkaChangelog,
    KafkaCheckpoints,
    KafkaSink,
    KafkaSource,
    json_value,
)

if TYPE_CHECKING:
    from riprap.state import State

BOOTSTRAP = os.environ.get("RIPRAP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
TOPIC_PREFIX = ""
"""Prefixes every topic and group name (tests give each run its own)."""
PARTITIONS = 4
CUSTOMERS = 25
A_DAY = 86_400.0


def name(suffix: str) -> str:
    """A topic or group name of this example."""
    return f"{TOPIC_PREFIX}{suffix}"


def source(topic: str, group: str) -> KafkaSource:
    """A member of ``group`` reading ``topic``."""
    return KafkaSource(
        name(topic),
        bootstrap_servers=BOOTSTRAP,
        group_id=name(group),
        consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
    )


def first_time(order: dict[str, Any], state: State) -> bool:
    """Whether this order (the state's key is its id) is new: a re-keying replay is not."""
    if state.get(False):
        return False
    state.set(True, ttl=A_DAY)
    return True


def count(order: dict[str, Any], state: State) -> dict[str, Any]:
    """One more order for the customer (the record's key)."""
    orders: int = state.get(0) + 1
    state.set(orders)
    return {"customer": order["customer"], "orders": orders}


def counts() -> riprap.Pipeline:
    """Orders keyed by order id -> by customer -> each counted once -> the customer's count."""
    orders = source("orders", "rekey")
    by_customer = source("orders-by-customer", "counts")
    return (
        riprap.Pipeline(
            name("customer-counts"),
            checkpoint=KafkaCheckpoints(orders),
            checkpoint_interval=1.0,
            changelog=KafkaChangelog(BOOTSTRAP, topic=name("customer-counts-changelog")),
        )
        .source(orders)
        .map("decode", json_value)
        .through(
            "by_customer",
            KafkaSink(
                name("orders-by-customer"),
                bootstrap_servers=BOOTSTRAP,
                key=lambda order: order["customer"],
            ),
            by_customer,
            checkpoint=KafkaCheckpoints(by_customer),
        )
        .map("parse", json_value)
        .filter("once", first_time, state=True, key=lambda order: order["id"])
        .map("count", count, state=True)
        .sink(
            KafkaSink(
                name("customer-counts"),
                bootstrap_servers=BOOTSTRAP,
                key=lambda result: result["customer"],
            )
        )
    )


async def run_until(done: Any, within: float) -> riprap.RunReport:
    """Run the pipeline until ``await done()`` is true (or ``within`` seconds); its report."""
    deadline = time.monotonic() + within
    async with counts().open() as running:
        while time.monotonic() < deadline and not await done():
            if running.error is not None:
                raise running.error
            await asyncio.sleep(0.1)
        running.stop()
    return await running.wait()


async def create_topics() -> None:
    """The example's topics (customers' counts compacted: the last one is the count)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        for topic in ("orders", "orders-by-customer", "customer-counts"):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name(topic), PARTITIONS, 1)])
    finally:
        await admin.close()


async def produce_orders(count: int, seed: int = 7) -> dict[str, int]:
    """``count`` orders keyed by order id; how many each customer placed."""
    rng = random.Random(seed)
    placed: dict[str, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=False)
    await producer.start()
    try:
        sends = []
        for order_id in range(count):
            customer = f"c{rng.randrange(CUSTOMERS)}"
            placed[customer] = placed.get(customer, 0) + 1
            value = orjson.dumps({"id": order_id, "customer": customer})
            sends.append(await producer.send(name("orders"), value, key=str(order_id).encode()))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return placed


async def counted_until_done(total: int, within: float) -> dict[str, int]:
    """Run the pipeline until ``total`` orders are counted (or ``within`` s); the counts."""
    counted: dict[str, int] = {}

    async def every_order_counted() -> bool:
        return sum(counted.values()) >= total

    async def watch() -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            name("customer-counts"), bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            async for message in consumer:
                result = orjson.loads(message.value)
                customer = result["customer"]
                counted[customer] = max(counted.get(customer, 0), result["orders"])
        finally:
            await consumer.stop()

    watcher = asyncio.create_task(watch())
    try:
        print((await run_until(every_order_counted, within)).format())
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return counted


async def main(count: int, within: float) -> int:
    """Produce orders, count them per customer, print the counts; 0 if every one is right."""
    await create_topics()
    placed = await produce_orders(count)
    counted = await counted_until_done(count, within)
    print({customer: counted.get(customer) for customer in sorted(placed)})
    return 0 if counted == placed else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2_000, help="orders to produce")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait at most")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.count, args.timeout)))
