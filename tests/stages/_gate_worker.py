"""Subprocess for the gate crash test: JSON Lines -> quality gate -> SQLite upsert.

Usage: ``python _gate_worker.py INPUT CHECKPOINTS DATABASE``. The run resumes
from the checkpoint, so the test can kill it with SIGKILL at any moment and
start it again. Each input line is ``{"id", "amount"}``; the gate checks the
mean amount of every ``WINDOW`` records and halts on a breach (exit code 1,
the error on stderr). Parsing burns a little CPU so that a run lasts long
enough to be killed.
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
from riprap.stages.quality import Mean, QualityGate

PIPELINE = "gate-crash"
TABLE = "orders"
WINDOW = 50
WORK_ROUNDS = 300
"""Hash rounds per record: the "little work" that stretches a run."""


def parse(line: bytes) -> dict[str, Any]:
    """Decode one line (after some busy work)."""
    digest = line
    for _ in range(WORK_ROUNDS):
        digest = hashlib.sha256(digest).digest()
    value: dict[str, Any] = orjson.loads(line)
    return value


def build(source: str, checkpoints: str, database: str) -> riprap.Pipeline:
    """The pipeline under test, with frequent checkpoints and small batches."""
    gate = QualityGate("gate", window=WINDOW, checks=[Mean("amount", min=5.0)], on_breach="halt")
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=riprap.checkpoints.SqliteCheckpoints(checkpoints),
            checkpoint_interval=0.02,
            batch_size=7,
            max_in_flight=120,
        )
        .source(JsonLinesSource(source))
        .map("parse", parse)
        .stage(gate)
        .sink(SqliteSink(database, table=TABLE, key=lambda value: str(value["id"])))
    )


def main(argv: list[str]) -> int:
    """Run to completion (or a halt) and print the report's outcome."""
    report = riprap.run(build(*argv))
    sys.stdout.write(orjson.dumps({"outcome": report.outcome}).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
