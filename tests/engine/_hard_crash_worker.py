"""Subprocess for the hard-crash tests: records that kill the process without an exception.

Usage: ``python _hard_crash_worker.py [ID=HOW[,ID=HOW...]] [MILLISECONDS] [MAX_IN_FLIGHT
[CHECKPOINT_INTERVAL]]``, run in the test's directory. The pipeline reads ids
from ``input.jsonl`` into an SQLite table, spending ``MILLISECONDS`` on each
record (CPU work, so that a kill from outside lands mid-run). Its ``parse``
step ends the process on a poison ID the way native crashes do, as its HOW
says: ``exit`` calls ``os._exit(3)``, ``abort`` calls ``os.abort()``
(SIGABRT, as a failed assertion in a C library), ``kill`` sends itself
SIGKILL (as the OOM killer does). A run that ends on its own prints its
report as JSON and exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

import riprap
from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink
from riprap.deadletters import JsonLinesDeadLetters

if TYPE_CHECKING:
    from collections.abc import Mapping

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


def build(
    poison: Mapping[int, str],
    work: float = 0.0,
    max_in_flight: int = 100,
    checkpoint_interval: float = 0.05,
) -> riprap.Pipeline:
    """The pipeline under test, with small batches so runs checkpoint partial progress."""

    def parse(line: bytes) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(line)
        if value["id"] in poison:
            die(poison[value["id"]])
        if work:
            time.sleep(work)  # stands in for CPU work in the step
        return value

    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=SqliteCheckpoints("checkpoints.db"),
            dead_letter=JsonLinesDeadLetters("dlq.jsonl"),
            max_crashes=MAX_CRASHES,
            batch_size=min(20, max_in_flight),
            max_in_flight=max_in_flight,
            checkpoint_interval=checkpoint_interval,
        )
        .source(JsonLinesSource(INPUT))
        .map("parse", parse)
        .sink(SqliteSink("out.db", table=TABLE, key="id"))
    )


def main(argv: list[str]) -> int:
    """Run to completion and print the report as JSON."""
    pills = (pill.partition("=") for pill in argv[0].split(",") if pill)
    poison = {int(offset): how for offset, _, how in pills}
    work = float(argv[1]) / 1000 if len(argv) > 1 else 0.0
    max_in_flight = int(argv[2]) if len(argv) > 2 else 100
    interval = float(argv[3]) if len(argv) > 3 else 0.05
    report = riprap.run(build(poison, work, max_in_flight, interval))
    summary = {"outcome": report.outcome, "dead_lettered": dict(report.dead_lettered)}
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
