"""Child process for the changelog group test: a keyed windowed count, Kafka -> Kafka.

Usage: ``python _changelog_worker.py BOOTSTRAP SOURCE OUT GROUP CHANGELOG [sqlite]``.
Each input value is ``{"id": i, "user": ...}`` keyed by its user; the window
of a record is ``id // WINDOW``. The step keeps, per user, the current window
and its count, and emits ``{"user", "window", "count"}`` keyed by user: the
last output of a (user, window) is its count. Positions are the group's
offsets (:class:`KafkaCheckpoints`), state is in the changelog topic CHANGELOG
(and with ``sqlite``, in a local copy of the process's own, as on a machine
of its own).
Runs until killed or stopped by SIGTERM.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import riprap
from riprap.connectors.kafka import (
    KafkaChangelog,
    KafkaCheckpoints,
    KafkaSink,
    KafkaSource,
    json_value,
)
from riprap.state import MemoryStore, SqliteStore

if TYPE_CHECKING:
    from riprap.state import State

WINDOW = 1_000
"""Records of the input (by id) per window."""


def window_count(order: dict[str, Any], state: State) -> dict[str, Any]:
    """Count the user's records of the order's window."""
    window = order["id"] // WINDOW
    current, seen = state.get([window, 0])
    seen = seen + 1 if current == window else 1
    state.set([window, seen])
    return {"user": order["user"], "window": window, "count": seen}


def main(
    bootstrap: str, source: str, out: str, group: str, changelog: str, store: str = "memory"
) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    kafka = KafkaSource(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 300},
    )
    kept = SqliteStore(f"state-{os.getpid()}") if store == "sqlite" else MemoryStore()
    pipeline = (
        riprap.Pipeline(
            "window-counts",
            checkpoint=KafkaCheckpoints(kafka),
            checkpoint_interval=0.1,
            batch_size=200,
            max_in_flight=1_000,
            changelog=KafkaChangelog(bootstrap, topic=changelog),
        )
        .source(kafka)
        .map("decode", json_value)
        .map("window_count", window_count, state=kept)
        .sink(KafkaSink(out, bootstrap_servers=bootstrap, key=lambda v: v["user"]))
    )
    report = riprap.run(pipeline)
    sys.stdout.write(report.format() + "\n")


def no_changelog() -> riprap.Pipeline:
    """The same count without a changelog (refused under several workers)."""
    kafka = KafkaSource("orders", bootstrap_servers="127.0.0.1:9", group_id="counts")
    return (
        riprap.Pipeline("window-counts", checkpoint=KafkaCheckpoints(kafka))
        .source(kafka)
        .map("decode", json_value)
        .map("window_count", window_count, state=True)
        .sink(KafkaSink("out", bootstrap_servers="127.0.0.1:9"))
    )


def two_halves() -> riprap.Pipeline:
    """The count after a re-keying through a topic (refused under several workers)."""
    by_user = KafkaSource("by-user", bootstrap_servers="127.0.0.1:9", group_id="counts")
    return (
        riprap.Pipeline("window-counts")
        .source(KafkaSource("orders", bootstrap_servers="127.0.0.1:9", group_id="rekey"))
        .map("decode", json_value)
        .through("by_user", KafkaSink("by-user", bootstrap_servers="127.0.0.1:9"), by_user)
        .map("decode_again", json_value)
        .map("window_count", window_count, state=True)
        .sink(KafkaSink("out", bootstrap_servers="127.0.0.1:9"))
    )


if __name__ == "__main__":
    main(*sys.argv[1:7])
