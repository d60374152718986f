"""Subprocess for the crash-recovery test: JSON Lines -> transform -> SQLite upsert.

Usage: ``python _crash_worker.py INPUT CHECKPOINTS DATABASE``. The run resumes
from the checkpoint in ``CHECKPOINTS``, so the test can kill it with SIGKILL
at any moment and start it again. Batches are small and the transform burns a
little CPU so that a whole run lasts about a second: long enough to be killed
mid-flight many times. On completion the run's report is written to stdout as
one JSON object.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import orjson

import riprap
import riprap.checkpoints
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink

PIPELINE = "crash-recovery"
TABLE = "items"
WORK_ROUNDS = 40
"""Hash rounds per record: the "little work" that stretches a run."""


def transform(line: bytes) -> dict[str, Any]:
    """Parse one line and add the derived field ``square`` (after some busy work)."""
    value: dict[str, Any] = orjson.loads(line)
    digest = line
    for _ in range(WORK_ROUNDS):
        digest = hashlib.sha256(digest).digest()
    value["square"] = value["n"] * value["n"]
    return value


def build(source: str, checkpoints: str, database: str) -> riprap.Pipeline:
    """The pipeline under test, with frequent checkpoints and small batches."""
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=riprap.checkpoints.SqliteCheckpoints(checkpoints),
            checkpoint_interval=0.02,
            batch_size=20,
            max_in_flight=100,
        )
        .source(JsonLinesSource(source))
        .map("square", transform)
        .sink(SqliteSink(database, table=TABLE, key="id"))
    )


def main(argv: list[str]) -> int:
    """Run to completion and print the report as JSON."""
    source, checkpoints, database = argv
    report = riprap.run(build(source, checkpoints, database))
    summary = {
        "outcome": report.outcome,
        "records_in": report.records_in,
        "records_out": report.records_out,
        "positions": dict(report.positions),
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
