"""A Kafka pipeline for ``riprap run --workers N``: where each record came from, per process.

Configured by the environment (the test sets it): ``RIPRAP_TEST_BOOTSTRAP``,
``RIPRAP_TEST_TOPIC`` and ``RIPRAP_TEST_GROUP``. Each process writes
``{"p": partition, "o": offset}`` lines to ``out-<pid>.jsonl`` in its working
directory, so the test sees which worker read what, and how often.
"""

from __future__ import annotations

import os
from typing import Any

import riprap
from riprap.connectors.files import JsonLinesSink
from riprap.connectors.kafka import KafkaSource

FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
"""As in the conftest (this file is loaded by path, not imported from the package)."""


def _origin(record: riprap.Record) -> dict[str, Any]:
    """The record's partition and offset."""
    return {"p": record.partition, "o": record.offset}


def pipeline() -> riprap.Pipeline:
    """Kafka (a group member) -> origin -> this process's JSON Lines file."""
    source = KafkaSource(
        os.environ["RIPRAP_TEST_TOPIC"],
        bootstrap_servers=os.environ["RIPRAP_TEST_BOOTSTRAP"],
        group_id=os.environ["RIPRAP_TEST_GROUP"],
        consumer_options=dict(FAST_GROUP),
    )
    return (
        riprap.Pipeline("kafka-workers", checkpoint_path="checkpoints.db", checkpoint_interval=0.2)
        .source(source)
        .map("origin", _origin, record=True)
        .sink(JsonLinesSink(f"out-{os.getpid()}.jsonl"))
    )
