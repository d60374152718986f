"""Subprocess for the hard-crash tests: records that kill the process without an exception.

Usage: ``python _hard_crash_worker.py HOW POISON[,POISON...] [MILLISECONDS]``,
run in the test's directory. The pipeline reads ids from ``input.jsonl`` into
an SQLite table, spending ``MILLISECONDS`` on each record (CPU work, so that a
kill from outside lands mid-run). Its ``parse`` step ends the process on a poison id the way
native crashes do: ``exit`` calls ``os._exit(3)``, ``abort`` calls
``os.abort()`` (SIGABRT, as a failed assertion in a C library), ``kill`` sends
itself SIGKILL (as the OOM killer does). A run that ends on its own prints its
report as JSON and exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import orjson

import riprap
from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink
from riprap.deadletters import JsonLinesDeadLetters

PIPELINE = "hard-crash"
TABLE = "items"
RECORDS = 400
MAX_CRASHES = 3
INPUT = "input.jsonl"


def die(how: str) -> None:
    """End this process the way a native crash would: no exception, no cleanup."""
    if how == "exit":
        os._exit(3)
    if how == "abort":
        os.abort()
    os.kill(os.getpid(), signal.SIGKILL)


def build(how: str, poison: frozenset[int], work: float = 0.0) -> riprap.Pipeline:
    """The pipeline under test, with small batches so runs checkpoint partial progress."""

    def parse(line: bytes) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(line)
        if value["id"] in poison:
            die(how)
        if work:
            time.sleep(work)  # stands in for CPU work in the step
        return value

    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=SqliteCheckpoints("checkpoints.db"),
            dead_letter=JsonLinesDeadLetters("dlq.jsonl"),
            max_crashes=MAX_CRASHES,
            batch_size=20,
            max_in_flight=100,
            checkpoint_interval=0.05,
        )
        .source(JsonLinesSource(INPUT))
        .map("parse", parse)
        .sink(SqliteSink("out.db", table=TABLE, key="id"))
    )


def main(argv: list[str]) -> int:
    """Run to completion and print the report as JSON."""
    how, poison = argv[0], frozenset(int(p) for p in argv[1].split(",") if p)
    work = float(argv[2]) / 1000 if len(argv) > 2 else 0.0
    report = riprap.run(build(how, poison, work))
    summary = {"outcome": report.outcome, "dead_lettered": dict(report.dead_lettered)}
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
