"""Subprocess for the window crash test: JSON Lines -> tumbling window -> SQLite upsert.

Usage: ``python _window_worker.py INPUT CHECKPOINTS DATABASE DEAD_LETTERS [STORE]``;
``STORE`` (``sqlite``) keeps the windows as keyed state in ``state/``.
The run resumes from the checkpoint, so the test can kill it with SIGKILL at
any moment and start it again. Each input line is ``{"id", "key", "t", "n"}``;
the window sums ``n`` per key over tumbling windows of ``SIZE`` seconds of
event time ``t``, and the sink upserts one row per key and window start, so
re-emitted results (late updates, replays) overwrite instead of duplicating.
Late records go to the JSON Lines dead-letter file with reason ``late``.
Parsing burns a little CPU so that a run lasts long enough to be killed.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import orjson

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink
from riprap.stages.window import Window, tumbling
from riprap.state import SqliteStore

PIPELINE = "window-crash"
TABLE = "windows"
SIZE = 10.0
"""Window size in seconds of event time."""
OUT_OF_ORDERNESS = 5.0
LATENESS = 10.0
"""Allowed lateness in seconds."""
WORK_ROUNDS = 300
"""Hash rounds per record: the "little work" that stretches a run."""


def parse(line: bytes) -> dict[str, Any]:
    """Decode one line (after some busy work)."""
    digest = line
    for _ in range(WORK_ROUNDS):
        digest = hashlib.sha256(digest).digest()
    value: dict[str, Any] = orjson.loads(line)
    return value


def window_id(result: dict[str, Any]) -> str:
    """The sink key of a window result: its key and start."""
    return f"{result['key']}@{result['start']}"


def build(
    source: str, checkpoints: str, database: str, dead_letters: str, store: str = ""
) -> riprap.Pipeline:
    """The pipeline under test, with frequent checkpoints and small batches."""
    window = Window(
        "sums",
        window=tumbling(SIZE),
        key=lambda value: value["key"],
        time=lambda value: value["t"],
        reduce=lambda total, value: total + value["n"],
        initial=0,
        out_of_orderness=OUT_OF_ORDERNESS,
        allowed_lateness=LATENESS,
        store=SqliteStore("state") if store == "sqlite" else None,
    )
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=riprap.checkpoints.SqliteCheckpoints(checkpoints),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(dead_letters),
            checkpoint_interval=0.02,
            batch_size=25,
            max_in_flight=100,
        )
        .source(JsonLinesSource(source))
        .map("parse", parse)
        .stage(window)
        .sink(SqliteSink(database, table=TABLE, key=window_id))
    )


def main(argv: list[str]) -> int:
    """Run to completion and print the report's outcome."""
    report = riprap.run(build(*argv))
    sys.stdout.write(orjson.dumps({"outcome": report.outcome}).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
