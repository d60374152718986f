"""Change data capture: PostgreSQL -> Kafka (the outbox pattern), and Kafka -> PostgreSQL.

``capture`` reads every change of the table ``orders`` (a consistent snapshot
of its rows first) from a logical replication slot and publishes each as a
Debezium-shaped JSON event to the Kafka topic ``orders-changes``, keyed by the
order id::

    PostgreSQL "orders" -> slot -> priced (add total_cents) -> Kafka "orders-changes"

``apply`` reads that topic and keeps a replica table in another (or the same)
database up to date, deletes included::

    Kafka "orders-changes" -> decode (JSON) -> PostgreSQL "orders_replica" (upsert by id)

The capture side advances the slot only over checkpointed changes, so a crash
replays from the checkpoint; Kafka may then get an event twice (at-least-once),
and the replica, an idempotent upsert, ends the same. Setup in PostgreSQL
(``wal_level=logical``; the user needs the REPLICATION attribute)::

    CREATE TABLE orders (id int PRIMARY KEY, customer text, qty int, price numeric);
    CREATE TABLE orders_replica (LIKE orders INCLUDING ALL, total_cents bigint);
    CREATE PUBLICATION orders_pub FOR TABLE orders;

Run (each runs for ``--seconds``, then stops gracefully and prints its report)::

    RIPRAP_POSTGRES_DSN=postgresql://... RIPRAP_KAFKA_BOOTSTRAP=127.0.0.1:9092 \\
        python examples/postgres_cdc.py capture|apply [--seconds 30] [--data-dir riprap-cdc]
"""

from __future__ import annotations

import argparse
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.kafka import KafkaSink, KafkaSource, json_value
from riprap.connectors.postgres import PostgresCDCSource, PostgresSink

DSN = os.environ.get("RIPRAP_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BOOTSTRAP = os.environ.get("RIPRAP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
TOPIC = "orders-changes"


def priced(event: dict[str, Any]) -> dict[str, Any]:
    """Add ``total_cents`` to the row image of an insert, update or snapshot read."""
    after = event["after"]
    if after is None:  # a delete: nothing to price
        return event
    cents = int(Decimal(after["price"]) * after["qty"] * 100)
    return {**event, "after": {**after, "total_cents": cents}}


def order_id(event: dict[str, Any]) -> str:
    """The Kafka message key: the order id, so one order's events stay in order."""
    return str((event["after"] or event["before"])["id"])


def capture(dsn: str, bootstrap: str, data_dir: Path) -> riprap.Pipeline:
    """PostgreSQL changes of ``orders`` -> Kafka, checkpointed in ``data_dir``."""
    return (
        riprap.Pipeline(
            "orders-capture",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(data_dir / "capture.db"),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(data_dir / "capture-dlq.jsonl"),
            checkpoint_interval=1.0,
        )
        .source(PostgresCDCSource(dsn, slot="orders_capture", publication="orders_pub"))
        .map("priced", priced)
        .sink(KafkaSink(TOPIC, bootstrap_servers=bootstrap, key=order_id))
    )


def apply(dsn: str, bootstrap: str, data_dir: Path) -> riprap.Pipeline:
    """Kafka -> the ``orders_replica`` table (upsert by id, deletes applied)."""
    return (
        riprap.Pipeline(
            "orders-apply",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(data_dir / "apply.db"),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(data_dir / "apply-dlq.jsonl"),
            checkpoint_interval=1.0,
        )
        .source(KafkaSource(TOPIC, bootstrap_servers=bootstrap, group_id="orders-apply"))
        .map("decode", json_value)
        .sink(PostgresSink(dsn, "orders_replica", cdc=True))
    )


async def run_for(pipeline: riprap.Pipeline, seconds: float) -> riprap.RunReport | None:
    """Run ``pipeline`` for ``seconds``, then stop it gracefully (drain, checkpoint)."""
    async with pipeline.open() as running:
        await anyio.sleep(seconds)
        running.stop()
    return running.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["capture", "apply"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--data-dir", type=Path, default=Path("riprap-cdc"))
    args = parser.parse_args()
    build = capture if args.side == "capture" else apply
    report = anyio.run(run_for, build(DSN, BOOTSTRAP, args.data_dir), args.seconds)
    print(report.format() if report is not None else "no report")


if __name__ == "__main__":
    main()
