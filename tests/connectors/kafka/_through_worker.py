"""Child process for the through() kill test: orders re-keyed by customer, counted once each.

Usage: ``python _through_worker.py BOOTSTRAP TOPIC`` in the test's directory,
which holds ``orders.jsonl`` (``{"id", "customer"}`` lines). The first half
reads the file (SQLite checkpoints in ``checkpoints.db``) and writes each order
to TOPIC keyed by its customer; the second half reads TOPIC as a group member
(positions in the group, state in a changelog), drops an order it has counted
already, counts the rest per customer and upserts ``{"customer", "orders"}``
into ``out.db``. Runs until killed or stopped by SIGTERM.

``pipeline`` is the same for ``riprap run --workers 2`` (broker and topic from
``RIPRAP_TEST_BOOTSTRAP`` and ``RIPRAP_TEST_TOPIC``): the first half reads
``in-*.jsonl`` (the workers split the files), and the second writes one row
per (customer, count).
"""

from __future__ import annotations

import logging
import os
import sys
import time
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


def work(order: dict[str, Any]) -> dict[str, Any]:
    """Half a millisecond of work per order: a kill from outside lands while orders flow."""
    time.sleep(0.0005)
    return order


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


def counting(
    bootstrap: str,
    topic: str,
    source: riprap.Pipeline,
    sink: SqliteSink,
    *,
    session_ms: int,
    **options: Any,
) -> riprap.Pipeline:
    """``source``'s orders through TOPIC by customer, each counted once, into ``sink``."""
    by_customer = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-counts",
        consumer_options={"session_timeout_ms": session_ms, "heartbeat_interval_ms": 150},
    )
    return (
        source.with_options(
            checkpoint_path="checkpoints.db",
            checkpoint_interval=0.1,
            changelog=KafkaChangelog(bootstrap, topic=f"{topic}-changelog"),
            **options,
        )
        .through(
            "by_customer",
            KafkaSink(topic, bootstrap_servers=bootstrap, key=lambda order: order["customer"]),
            by_customer,
            checkpoint=KafkaCheckpoints(by_customer),
        )
        .map("parse", json_value)
        .filter("once", first_time, state=True, key=lambda order: order["id"])
        .map("count", count, state=True)
        .sink(sink)
    )


def main(bootstrap: str, topic: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    orders = (
        riprap.Pipeline("through-counts")
        .source(JsonLinesSource("orders.jsonl", decode=True))
        .map("work", work)
    )
    totals = SqliteSink("out.db", table="counts", key="customer", columns=("orders",))
    # A short session: a restart waits out its killed predecessor's session before it joins.
    riprap.run(
        counting(
            bootstrap, topic, orders, totals, session_ms=1000, batch_size=50, max_in_flight=200
        )
    )


def pipeline() -> riprap.Pipeline:
    counts = SqliteSink(
        "out.db",
        table="counts",
        key=lambda row: f"{row['customer']}:{row['orders']}",
        timeout=30.0,
    )
    return counting(
        os.environ["RIPRAP_TEST_BOOTSTRAP"],
        os.environ["RIPRAP_TEST_TOPIC"],
        riprap.Pipeline("through-counts").source(JsonLinesSource("in-*.jsonl", decode=True)),
        counts,
        session_ms=2000,
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
