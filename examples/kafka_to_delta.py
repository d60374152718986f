"""Events from a Kafka topic to a Delta Lake table, exactly once.

Produces synthetic page-view events (about 1% malformed JSON, some with an
extra field) to the topic ``page-views``, then runs::

    Kafka "page-views" -> decode (JSON) -> Delta table

until the end of the topic as it was at the start, with SQLite checkpoints
in ``<data-dir>/checkpoints.db`` and dead letters in ``<data-dir>/dlq.jsonl``.
Each Delta commit records, per Kafka partition, the offset it covers (a Delta
app transaction), so a run killed between a commit and its checkpoint skips
on restart what the table already holds: every event is in the table once.
New fields become new nullable columns (``new_columns="add"``).

It needs a Kafka-protocol broker (``RIPRAP_KAFKA_BOOTSTRAP``, default
``127.0.0.1:9092``); the table is a local directory or ``s3://bucket/prefix``
(endpoint from ``RIPRAP_S3_ENDPOINT``, credentials from the AWS environment)::

    python examples/kafka_to_delta.py lake/page_views [--count 10000] [--data-dir riprap-delta]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

import riprap
import riprap.deadletters
from riprap.connectors.kafka import KafkaSource, json_value
from riprap.connectors.lake import DeltaSink, LakeS3Options

TOPIC = "page-views"
PARTITIONS = 4


def build(bootstrap: str, table: str, data_dir: Path) -> riprap.Pipeline:
    """The pipeline: decode page views from Kafka and append them to a Delta table."""
    s3 = None
    if table.startswith("s3://"):
        s3 = LakeS3Options(endpoint_url=os.environ.get("RIPRAP_S3_ENDPOINT"))
    return (
        riprap.Pipeline(
            "kafka-to-delta",
            checkpoint_path=str(data_dir / "checkpoints.db"),
            checkpoint_interval=1.0,
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(data_dir / "dlq.jsonl"),
        )
        .source(
            KafkaSource(
                TOPIC, bootstrap_servers=bootstrap, group_id="riprap-kafka-to-delta", stop_at="end"
            )
        )
        .map("decode", json_value)
        # A commit per 5,000 events or every 2 s: fewer, larger table versions.
        .sink(DeltaSink(table, new_columns="add", max_rows=5_000, max_age=2.0, s3=s3))
    )


async def produce(bootstrap: str, count: int, seed: int = 11) -> None:
    """Create the topic if needed and produce ``count`` page views."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(count):
            view: dict[str, object] = {
                "id": i,
                "page": f"/p/{rng.randrange(50)}",
                "ms": rng.randrange(5_000),
            }
            if rng.random() < 0.05:
                view["referrer"] = "search"  # a field the table gains on the way
            value = orjson.dumps(view)
            if rng.random() < 0.01:
                value = value[: len(value) // 2]  # a truncated message
            await producer.send(TOPIC, value, key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def main(bootstrap: str, table: str, count: int, data_dir: Path) -> riprap.RunReport:
    """Produce ``count`` events, then run the pipeline to the end of the topic."""
    await produce(bootstrap, count)
    return await build(bootstrap, table, data_dir).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="a directory or s3://bucket/prefix")
    parser.add_argument("--count", type=int, default=10_000, help="events to produce")
    parser.add_argument("--data-dir", type=Path, default=Path("riprap-delta"))
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = os.environ.get("RIPRAP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    print(asyncio.run(main(bootstrap, args.table, args.count, args.data_dir)).format())
