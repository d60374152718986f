"""Two inputs merged into one pipeline: live orders and a backfill file, one checkpoint.

Makes two sample files on first run: ``orders.jsonl`` (today's orders) and
``backfill.jsonl`` (last year's, re-imported). One pipeline reads both at
once and upserts every order into one SQLite table::

    orders:    orders.jsonl   --\\
                                 >-> parse -> tag source -> SQLite "orders" (upsert by id)
    backfill:  backfill.jsonl --/

Both files are read concurrently: the in-flight bound holds across them, and
the smaller file ending does not end the run. Their positions live in the one
checkpoint as ``orders/<file>`` and ``backfill/<file>``, so a run that is
stopped or killed resumes each where it was. The pipeline prints its topology
and its run report; run it again and it reads nothing new.

With ``--kafka`` the live orders come from the topic ``orders`` on a
Kafka-protocol broker at ``RIPRAP_KAFKA_BOOTSTRAP`` (default
``127.0.0.1:9092``) instead of the file, and the run goes on until Ctrl+C::

    python examples/merged_sources.py [--kafka] [--data-dir merged-example]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import riprap
from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.files import JsonLinesSource, parse_json_line
from riprap.connectors.sqlite import SqliteSink

BOOTSTRAP = os.environ.get("RIPRAP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
LIVE = 1_000
BACKFILL = 400


def write_samples(data_dir: Path) -> None:
    """Today's orders (ids from 10 000) and last year's backfill (ids from 0)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, first, count in (("orders", 10_000, LIVE), ("backfill", 0, BACKFILL)):
        with (data_dir / f"{name}.jsonl").open("w") as file:
            for i in range(first, first + count):
                file.write(json.dumps({"id": i, "amount": i % 97}) + "\n")


def tag(record: riprap.Record) -> dict[str, Any]:
    """The order with the merge's source name (its partition is ``name/...``)."""
    order: dict[str, Any] = dict(record.value)
    order["via"] = (record.partition or "").partition("/")[0]
    return order


def live_orders(data_dir: Path, *, kafka: bool) -> riprap.Source:
    """Today's orders: the Kafka topic, or the sample file."""
    if kafka:
        from riprap.connectors.kafka import KafkaSource

        return KafkaSource("orders", bootstrap_servers=BOOTSTRAP, group_id="merged-example")
    return JsonLinesSource(data_dir / "orders.jsonl")


def build(data_dir: Path, *, kafka: bool = False) -> riprap.Pipeline:
    """Both inputs, merged, into the ``orders`` table."""
    return (
        riprap.Pipeline("merged-orders", checkpoint=SqliteCheckpoints(data_dir / "checkpoints.db"))
        .sources(
            orders=live_orders(data_dir, kafka=kafka),
            backfill=JsonLinesSource(data_dir / "backfill.jsonl"),
        )
        .map("parse", parse_json_line)
        .map("tag", tag, record=True)
        .sink(SqliteSink(data_dir / "orders.db", table="orders", key="id"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kafka", action="store_true", help="read live orders from Kafka")
    parser.add_argument("--data-dir", type=Path, default=Path("merged-example"))
    args = parser.parse_args()
    if not (args.data_dir / "backfill.jsonl").exists():
        write_samples(args.data_dir)
    pipeline = build(args.data_dir, kafka=args.kafka)
    print(pipeline.describe())
    print(riprap.run(pipeline).format())


if __name__ == "__main__":
    main()
