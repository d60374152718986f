"""Subprocess for the crash-loop test: JSON Lines -> transform -> SQLite, with a poison pill.

Usage: ``python _crash_loop_worker.py INPUT CHECKPOINTS DATABASE DLQ``. The
transform has a bug that raises ``RuntimeError`` for exactly one record (id
:data:`POISON`), so every run stops there until the record has crashed the
pipeline ``max_crashes`` times and the next start quarantines it. A failed run
raises out of ``riprap.run`` (traceback on stderr, exit status 1); a finished
run writes its report to stdout as one JSON object and exits 0.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink

PIPELINE = "crash-loop"
TABLE = "items"
STAGE = "transform"
POISON = 137
"""The id of the record that triggers the bug."""
MAX_CRASHES = 3


def transform(line: bytes) -> dict[str, Any]:
    """Parse one line and add ``double``; a bug makes it blow up on the poison record."""
    value: dict[str, Any] = orjson.loads(line)
    if value["id"] == POISON:
        raise RuntimeError(f"bug: cannot transform record {POISON}")
    value["double"] = value["n"] * 2
    return value


def build(source: str, checkpoints: str, database: str, dlq: str) -> riprap.Pipeline:
    """The pipeline under test, with small batches so runs checkpoint partial progress."""
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=riprap.checkpoints.SqliteCheckpoints(checkpoints),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
            max_crashes=MAX_CRASHES,
            batch_size=20,
            max_in_flight=100,
        )
        .source(JsonLinesSource(source))
        .map(STAGE, transform)
        .sink(SqliteSink(database, table=TABLE, key="id"))
    )


def main(argv: list[str]) -> int:
    """Run to completion and print the report as JSON.

    A failed run raises (``PipelineError``), as in any script that calls
    ``riprap.run``: the interpreter prints the traceback and exits 1.
    """
    source, checkpoints, database, dlq = argv
    report = riprap.run(build(source, checkpoints, database, dlq))
    summary = {
        "outcome": report.outcome,
        "records_in": report.records_in,
        "records_out": report.records_out,
        "dead_lettered": dict(report.dead_lettered),
        "positions": dict(report.positions),
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
