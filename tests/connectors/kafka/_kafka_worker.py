"""Child process for the Kafka crash tests: Kafka -> decode -> add_total -> Kafka.

Usage: ``python _kafka_worker.py BOOTSTRAP SOURCE OUT GROUP CHECKPOINT [SESSION_MS]``.
CHECKPOINT is an SQLite file (checkpoints every 0.1 s), or ``kafka`` to keep the
positions as the group's committed offsets (:class:`KafkaCheckpoints`).
SESSION_MS sets the consumer's session timeout (default 2000; heartbeats at a
sixth of it). It runs until killed or stopped by SIGTERM; the run report goes to
stdout, warnings to stderr.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import riprap
import riprap.checkpoints
from riprap.connectors.kafka import KafkaCheckpoints, KafkaSink, KafkaSource, json_value


def add_total(order: dict[str, Any]) -> dict[str, Any]:
    """The transform under test."""
    return {**order, "total": order["qty"] * 2}


def main(
    bootstrap: str, source: str, out: str, group: str, checkpoints: str, session_ms: str = "2000"
) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    session = int(session_ms)
    kafka = KafkaSource(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        consumer_options={"session_timeout_ms": session, "heartbeat_interval_ms": session // 6},
    )
    backend: riprap.checkpoints.CheckpointBackend = (
        KafkaCheckpoints(kafka)
        if checkpoints == "kafka"
        else riprap.checkpoints.SqliteCheckpoints(checkpoints)
    )
    pipeline = (
        riprap.Pipeline(
            "kafka-crash",
            checkpoint=backend,
            checkpoint_interval=0.1,
            batch_size=500,
            max_in_flight=2_000,
        )
        .source(kafka)
        .map("decode", json_value)
        .map("add_total", add_total)
        .sink(KafkaSink(out, bootstrap_servers=bootstrap))
    )
    report = riprap.run(pipeline)
    sys.stdout.write(report.format() + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:7])
