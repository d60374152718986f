"""Pipeline for the checkpoint-damage test, run by ``riprap run`` in the test's directory.

``riprap run /path/_damage_worker.py`` reads ``input.jsonl`` (one partition,
positions are line numbers) through a transform that burns a little CPU into
an SQLite upsert, with SQLite checkpoints in ``checkpoints.db`` saved often:
a whole run lasts about a second, long enough to copy the store mid-run and
to kill the process with SIGKILL.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

import riprap
import riprap.checkpoints
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink

PIPELINE = "damaged"
INPUT = "input.jsonl"
CHECKPOINTS = "checkpoints.db"
DATABASE = "out.db"
TABLE = "items"
WORK_ROUNDS = 40
"""Hash rounds per record: the "little work" that stretches a run."""


def transform(line: bytes) -> dict[str, Any]:
    """Parse one line and add ``square`` (after some busy work)."""
    value: dict[str, Any] = orjson.loads(line)
    digest = line
    for _ in range(WORK_ROUNDS):
        digest = hashlib.sha256(digest).digest()
    value["square"] = value["n"] * value["n"]
    return value


def pipeline() -> riprap.Pipeline:
    """The pipeline under test, with frequent checkpoints and small batches."""
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=riprap.checkpoints.SqliteCheckpoints(CHECKPOINTS),
            checkpoint_interval=0.02,
            batch_size=20,
            max_in_flight=100,
        )
        .source(JsonLinesSource(INPUT))
        .map("square", transform)
        .sink(SqliteSink(DATABASE, table=TABLE, key="id"))
    )
