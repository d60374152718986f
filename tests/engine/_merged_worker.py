"""Subprocess for the merged-sources kill test: two JSON Lines files -> parse -> SQLite and a log.

Usage: ``python _merged_worker.py``, in the directory holding ``a.jsonl`` and
``b.jsonl``. Both files are read at once (``Pipeline.sources``); every record
goes to the SQLite table (keyed, so idempotent) and to an append-only JSON
Lines log (at-least-once). The run resumes from the checkpoint in
``checkpoints.db``, so the test can kill it with SIGKILL at any moment and
start it again. On completion it prints its report's counts as JSON.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import orjson

import riprap
import riprap.checkpoints
from riprap import Branch
from riprap.connectors.files import JsonLinesSink, JsonLinesSource
from riprap.connectors.sqlite import SqliteSink

PIPELINE = "merged"
INPUTS = {"a": "a.jsonl", "b": "b.jsonl"}
"""Each source's name in the merge and its file (relative to the worker's directory)."""
TABLE = "items"
LOG = "log.jsonl"
WORK_ROUNDS = 40
"""Hash rounds per record: a little work, so that a run lasts long enough to be killed."""


def partition(name: str) -> str:
    """The checkpoint's partition name of one source's file."""
    return f"{name}/{INPUTS[name]}"


def parse(line: bytes) -> dict[str, Any]:
    """Parse one line (after some busy work)."""
    digest = line
    for _ in range(WORK_ROUNDS):
        digest = hashlib.sha256(digest).digest()
    value: dict[str, Any] = orjson.loads(line)
    return value


def build() -> riprap.Pipeline:
    """The pipeline under test, with frequent checkpoints and small batches."""
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=riprap.checkpoints.SqliteCheckpoints("checkpoints.db"),
            checkpoint_interval=0.02,
            batch_size=20,
            max_in_flight=100,
        )
        .sources(**{name: JsonLinesSource(path) for name, path in INPUTS.items()})
        .map("parse", parse)
        .fan_out(
            db=Branch().sink(SqliteSink("out.db", table=TABLE, key="id")),
            log=Branch().sink(JsonLinesSink(LOG)),
        )
    )


def main() -> int:
    """Run to completion and print the report's counts as JSON."""
    report = riprap.run(build())
    summary = {
        "outcome": report.outcome,
        "records_in": report.records_in,
        "positions": dict(report.positions),
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
