"""Dual write and routing by region: one source, several sinks, one checkpoint per pipeline.

Makes sample orders on first run, then runs two pipelines over them::

    dual-write:  orders.jsonl -> parse -> fan_out
                                            db:     SQLite "orders" (upsert by id)
                                            events: Kafka "orders"
    by-region:   orders.jsonl -> parse -> route by_region
                                            eu: redact email -> Kafka "orders-eu"
                                            us: Kafka "orders-us"
                                            (other regions: dead letters)

A position is checkpointed only once every sink that got the record has it,
so a crash replays exactly what some sink may lack: SQLite's upsert makes the
replay harmless, Kafka gets such records again (at-least-once). Each pipeline
prints its topology (``Pipeline.describe()``) and then its run report, with
one line per sink.

With ``--kafka`` the events go to a Kafka-protocol broker at
``RIPRAP_KAFKA_BOOTSTRAP`` (default ``127.0.0.1:9092``); without it they go to
JSON Lines files in ``<data-dir>/events/``, so the example runs anywhere::

    python examples/dual_write.py [--kafka] [--data-dir dual-write-example]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

import riprap
from riprap import Branch
from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.files import JsonLinesSink, JsonLinesSource, parse_json_line
from riprap.connectors.sqlite import SqliteSink
from riprap.deadletters import JsonLinesDeadLetters

BOOTSTRAP = os.environ.get("RIPRAP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
TOPIC_PREFIX = ""
"""Put before every topic name (tests give each run topics of its own)."""
REGIONS = ("eu", "us")


def write_sample_orders(path: Path, count: int = 1_000) -> None:
    """``count`` orders, one JSON object a line; every 100th from a region not served."""
    rng = random.Random(11)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as file:
        for i in range(count):
            region = "apac" if i % 100 == 42 else rng.choice(REGIONS)
            order = {"id": i, "region": region, "email": f"c{i}@example.com", "amount": i % 90}
            file.write(json.dumps(order) + "\n")


def redact_email(order: dict[str, Any]) -> dict[str, Any]:
    """EU events carry no email address."""
    return {key: value for key, value in order.items() if key != "email"}


def events_sink(topic: str, data_dir: Path, *, kafka: bool) -> riprap.Sink:
    """A Kafka topic, or a JSON Lines file named after it."""
    if kafka:
        from riprap.connectors.kafka import KafkaSink

        return KafkaSink(TOPIC_PREFIX + topic, bootstrap_servers=BOOTSTRAP, name=topic)
    return JsonLinesSink(data_dir / "events" / f"{topic}.jsonl", name=topic)


def base(name: str, data_dir: Path) -> riprap.Pipeline:
    """The orders, parsed, with checkpoints and dead letters in ``data_dir``."""
    return (
        riprap.Pipeline(
            name,
            checkpoint=SqliteCheckpoints(data_dir / "checkpoints.db"),
            dead_letter=JsonLinesDeadLetters(data_dir / f"{name}-dead-letters.jsonl"),
        )
        .source(JsonLinesSource(data_dir / "orders.jsonl"))
        .map("parse", parse_json_line)
    )


def dual_write(data_dir: Path, *, kafka: bool = False) -> riprap.Pipeline:
    """Every order into SQLite and onto the events topic."""
    return base("dual-write", data_dir).fan_out(
        db=Branch().sink(SqliteSink(data_dir / "orders.db", table="orders", key="id")),
        events=Branch().sink(events_sink("orders", data_dir, kafka=kafka)),
    )


def by_region(data_dir: Path, *, kafka: bool = False) -> riprap.Pipeline:
    """Each order onto its region's topic; an order from another region is a dead letter."""
    return base("by-region", data_dir).route(
        "by_region",
        lambda order: order["region"],
        on_unmatched="dlq",
        eu=Branch()
        .map("redact", redact_email)
        .sink(events_sink("orders-eu", data_dir, kafka=kafka)),
        us=Branch().sink(events_sink("orders-us", data_dir, kafka=kafka)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kafka", action="store_true", help="write events to Kafka topics")
    parser.add_argument("--data-dir", type=Path, default=Path("dual-write-example"))
    args = parser.parse_args()
    if not (args.data_dir / "orders.jsonl").exists():
        write_sample_orders(args.data_dir / "orders.jsonl")
    for build in (dual_write, by_region):
        pipeline = build(args.data_dir, kafka=args.kafka)
        print(pipeline.describe())
        print(riprap.run(pipeline).format())


if __name__ == "__main__":
    main()
