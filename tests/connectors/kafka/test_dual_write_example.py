"""``examples/dual_write.py`` against a real broker: SQLite and Kafka get every order."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from riprap.connectors.sqlite import read_table
from riprap.deadletters import read_dead_letters
from tests._examples import load_example

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from types import ModuleType

    from .conftest import KafkaHelper

pytestmark = [pytest.mark.anyio, pytest.mark.network]

ORDERS = 1_000


@pytest.fixture
def example(kafka: KafkaHelper) -> Iterator[ModuleType]:
    """The example module, writing to topics of this test's own on the test broker."""
    module = load_example("dual_write.py")
    module.__dict__.update(BOOTSTRAP=kafka.bootstrap, TOPIC_PREFIX=f"t-{uuid.uuid4().hex[:8]}-")
    yield module
    del sys.modules[module.__name__]


async def create_topics(kafka: KafkaHelper, prefix: str, *names: str) -> None:
    """The example's topics, each with one partition."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(prefix + name, 1, 1) for name in names])
    finally:
        await admin.close()


def ids(messages: list[Any]) -> list[int]:
    """The order ids of Kafka messages, in topic order."""
    return [orjson.loads(message.value)["id"] for message in messages]


async def test_dual_write_puts_every_order_in_sqlite_and_on_kafka(
    example: ModuleType, kafka: KafkaHelper, tmp_path: Path
) -> None:
    """Fan-out: the table and the topic each hold every order, the report counts both."""
    example.write_sample_orders(tmp_path / "orders.jsonl", ORDERS)
    await create_topics(kafka, example.TOPIC_PREFIX, "orders")
    report = await example.dual_write(tmp_path, kafka=True).run()
    table = await read_table(tmp_path / "orders.db", "orders")
    assert list(range(ORDERS)) == sorted(table)
    on_kafka = await kafka.read_all(example.TOPIC_PREFIX + "orders", ORDERS)
    assert list(range(ORDERS)) == ids(on_kafka)
    by_sink = {step.step_id: step.records_out for step in report.sinks}
    assert {"sqlite": ORDERS, "orders": ORDERS} == by_sink
    assert [ORDERS] == list(report.positions.values())


async def test_by_region_routes_orders_to_their_topics(
    example: ModuleType, kafka: KafkaHelper, tmp_path: Path
) -> None:
    """Routing: each region's topic gets its orders (EU without emails), the rest dead letters."""
    example.write_sample_orders(tmp_path / "orders.jsonl", ORDERS)
    await create_topics(kafka, example.TOPIC_PREFIX, "orders-eu", "orders-us")
    orders = [orjson.loads(line) for line in (tmp_path / "orders.jsonl").read_bytes().splitlines()]
    report = await example.by_region(tmp_path, kafka=True).run()
    expected = {region: [o for o in orders if o["region"] == region] for region in ("eu", "us")}
    eu = await kafka.read_all(example.TOPIC_PREFIX + "orders-eu", len(expected["eu"]))
    us = await kafka.read_all(example.TOPIC_PREFIX + "orders-us", len(expected["us"]))
    assert [o["id"] for o in expected["eu"]] == ids(eu)
    assert [o["id"] for o in expected["us"]] == ids(us)
    assert not any("email" in orjson.loads(message.value) for message in eu)
    letters = list(read_dead_letters(tmp_path / "by-region-dead-letters.jsonl"))
    assert [i for i in range(ORDERS) if i % 100 == 42] == [letter.offset for letter in letters]
    assert {"unrouted": 10} == dict(report.dead_lettered)
