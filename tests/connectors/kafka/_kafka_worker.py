"""Child process for the Kafka crash test: Kafka -> decode -> add_total -> Kafka.

Usage: ``python _kafka_worker.py BOOTSTRAP SOURCE OUT GROUP CHECKPOINT_DB``. It
runs until killed or stopped by SIGTERM; SQLite checkpoints every 0.1 s.
"""

from __future__ import annotations

import sys
from typing import Any

import riprap
import riprap.checkpoints
from riprap.connectors.kafka import KafkaSink, KafkaSource, json_value

FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


def add_total(order: dict[str, Any]) -> dict[str, Any]:
    """The transform under test."""
    return {**order, "total": order["qty"] * 2}


def main(bootstrap: str, source: str, out: str, group: str, checkpoints: str) -> None:
    pipeline = (
        riprap.Pipeline(
            "kafka-crash",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(checkpoints),
            checkpoint_interval=0.1,
            batch_size=500,
            max_in_flight=2_000,
        )
        .source(
            KafkaSource(
                source, bootstrap_servers=bootstrap, group_id=group, consumer_options=FAST_GROUP
            )
        )
        .map("decode", json_value)
        .map("add_total", add_total)
        .sink(KafkaSink(out, bootstrap_servers=bootstrap))
    )
    riprap.run(pipeline)


if __name__ == "__main__":
    main(*sys.argv[1:6])
