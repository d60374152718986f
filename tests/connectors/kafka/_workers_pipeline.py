"""A Kafka pipeline for ``riprap run --workers N``: where each record came from, per process.

Configured by the environment (the test sets it): ``RIPRAP_TEST_BOOTSTRAP``,
``RIPRAP_TEST_TOPIC`` and ``RIPRAP_TEST_GROUP``. Each process writes
``{"p": partition, "o": offset}`` lines to ``out-<pid>.jsonl`` in its working
directory, so the test sees which worker read what, and how often.
``counts`` writes ``{"i": id, "k": key, "n": count}`` instead: a message's id
(its value), its key and how many messages of that key so far, kept in a
changelog the workers share.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import riprap
from riprap.connectors.files import JsonLinesSink
from riprap.connectors.kafka import KafkaChangelog, KafkaCheckpoints, KafkaSource

if TYPE_CHECKING:
    from riprap.state import State

FAST_GROUP = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 150}
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


def _count(value: bytes, state: State) -> dict[str, Any]:
    """The message's id, its key and the key's running count."""
    n: int = state.get(0) + 1
    state.set(n)
    return {"i": int(value), "k": state.key.decode(), "n": n}


def counts() -> riprap.Pipeline:
    """Kafka (a group member) -> keyed running count (in a changelog) -> this process's file."""
    bootstrap, topic = os.environ["RIPRAP_TEST_BOOTSTRAP"], os.environ["RIPRAP_TEST_TOPIC"]
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=os.environ["RIPRAP_TEST_GROUP"],
        consumer_options=dict(FAST_GROUP),
    )
    return (
        riprap.Pipeline(
            "kafka-counts",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.2,
            changelog=KafkaChangelog(bootstrap, topic=f"{topic}-changelog"),
        )
        .source(source)
        .map("count", _count, state=True)
        .sink(JsonLinesSink(f"out-{os.getpid()}.jsonl"))
    )
