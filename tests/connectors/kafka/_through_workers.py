"""A pipeline in two halves for ``riprap run --workers 2``, loaded in the test's directory.

The broker and topic come from ``RIPRAP_TEST_BOOTSTRAP`` and
``RIPRAP_TEST_TOPIC``. The first half reads ``in-*.jsonl`` (``{"id",
"customer"}`` lines; workers split the files) and writes each order to the
topic keyed by its customer; the second half reads the topic as a member of
one group, drops an order it counted already, counts per customer (state in a
changelog) and writes one row per (customer, count) into ``out.db``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import riprap
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.kafka import (
    KafkaChangelog,
    KafkaCheckpoints,
    KafkaSink,
    KafkaSource,
    json_value,
)
from riprap.connectors.sqlite import SqliteSink

if TYPE_CHECKING:
    from riprap.state import State


def first_time(order: dict[str, Any], state: State) -> bool:
    """Whether this order (the state's key is its id) was not counted yet."""
    if state.get(False):
        return False
    state.set(True, ttl=86_400)
    return True


def count(order: dict[str, Any], state: State) -> dict[str, Any]:
    """One more order for the customer."""
    orders: int = state.get(0) + 1
    state.set(orders)
    return {"customer": order["customer"], "orders": orders}


def pipeline() -> riprap.Pipeline:
    bootstrap = os.environ["RIPRAP_TEST_BOOTSTRAP"]
    topic = os.environ["RIPRAP_TEST_TOPIC"]
    by_customer = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-counts",
        consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 300},
    )
    return (
        riprap.Pipeline(
            "through-counts",
            checkpoint_path="checkpoints.db",
            checkpoint_interval=0.1,
            changelog=KafkaChangelog(bootstrap, topic=f"{topic}-changelog"),
        )
        .source(JsonLinesSource("in-*.jsonl", decode=True))
        .through(
            "by_customer",
            KafkaSink(topic, bootstrap_servers=bootstrap, key=lambda order: order["customer"]),
            by_customer,
            checkpoint=KafkaCheckpoints(by_customer),
        )
        .map("decode", json_value)
        .filter("first", first_time, state=True, key=lambda order: order["id"])
        .map("count", count, state=True)
        .sink(
            SqliteSink(
                "out.db",
                table="counts",
                key=lambda row: f"{row['customer']}:{row['orders']}",
                timeout=30.0,
            )
        )
    )
