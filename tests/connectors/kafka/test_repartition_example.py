"""``examples/repartition.py`` against a real broker: counts per customer, replays dropped."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING

import orjson
import pytest

from tests._examples import load_example, with_consumer_options

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

    from .conftest import KafkaHelper, Message

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

ORDERS = 400


@pytest.fixture
def example(kafka: KafkaHelper) -> Iterator[ModuleType]:
    """The example module, on topics and groups of this test's own on the test broker."""
    module = load_example("repartition.py")
    module.__dict__.update(BOOTSTRAP=kafka.bootstrap, TOPIC_PREFIX=f"t-{uuid.uuid4().hex[:8]}-")
    with_consumer_options(module, FAST_GROUP)
    yield module
    del sys.modules[module.__name__]


async def test_orders_keyed_by_order_are_counted_per_customer_once_each(
    example: ModuleType, kafka: KafkaHelper
) -> None:
    """Re-keyed through a topic, every customer's count is exact, with a replay dropped."""
    await example.create_topics()
    placed = await example.produce_orders(ORDERS)
    # A re-keying run that crashed would write its last orders again: here, the first 50.
    replayed: list[Message] = [
        (customer.encode(), orjson.dumps({"id": i, "customer": customer}), [])
        for i, customer in ((i, customer_of(example, i)) for i in range(50))
    ]
    await kafka.produce(example.name("orders-by-customer"), replayed)
    counted = await example.counted_until_done(ORDERS, 60.0)
    assert placed == counted
    assert example.CUSTOMERS == len(counted)


def customer_of(example: ModuleType, order_id: int) -> str:
    """The customer ``produce_orders`` gave order ``order_id`` (the same random draws)."""
    import random

    rng = random.Random(7)
    customer = ""
    for _ in range(order_id + 1):
        customer = f"c{rng.randrange(example.CUSTOMERS)}"
    return customer
