"""examples/postgres_cdc.py: PostgreSQL -> Kafka -> PostgreSQL keeps a replica equal."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from tests._examples import load_example, with_consumer_options
from tests.connectors.kafka.conftest import FAST_GROUP

from ._writer import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from .conftest import PgHelper

pytest.importorskip("aiokafka")

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.kafka]

SETUP = (
    "CREATE TABLE orders (id int PRIMARY KEY, customer text, qty int, price numeric)",
    "CREATE TABLE orders_replica (LIKE orders INCLUDING ALL, total_cents bigint)",
    "CREATE PUBLICATION orders_pub FOR TABLE orders",
    "INSERT INTO orders SELECT i, 'c' || i, i % 5 + 1, 2.50 FROM generate_series(1, 50) i",
)


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    """A Kafka-protocol broker for this module."""
    from riprap.testing import kafka_broker

    with kafka_broker() as address:
        yield address


async def create_topic(bootstrap: str, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
    finally:
        await admin.close()


async def test_capture_and_apply_keep_the_replica_equal(
    pg: PgHelper, bootstrap: str, tmp_path: Path
) -> None:
    """Snapshot, inserts, updates and deletes travel through Kafka into the replica table."""
    example = load_example("postgres_cdc.py")
    with_consumer_options(example, FAST_GROUP)
    await pg.execute(*SETUP)
    await create_topic(bootstrap, example.TOPIC)
    expected: list[Any] = []

    async def replica_matches() -> bool:
        nonlocal expected
        source = await pg.fetch("SELECT id, customer, qty, price FROM orders ORDER BY id")
        replica = await pg.fetch(
            "SELECT id, customer, qty, price, total_cents FROM orders_replica ORDER BY id"
        )
        expected = [(*row, int(row["price"] * row["qty"] * 100)) for row in source]
        return expected == [tuple(row) for row in replica]

    capture = example.capture(pg.dsn, bootstrap, tmp_path)
    apply = example.apply(pg.dsn, bootstrap, tmp_path)
    async with capture.open() as capturing, apply.open() as applying:
        await eventually(replica_matches)
        await pg.execute(
            "INSERT INTO orders VALUES (51, 'new', 2, 9.99)",
            "UPDATE orders SET qty = 7 WHERE id = 3",
            "DELETE FROM orders WHERE id IN (4, 5)",
        )
        await eventually(replica_matches)
        capturing.stop()
        applying.stop()
    assert 49 == len(expected)
    assert (51, "new", 2, Decimal("9.99"), 1998) in expected
