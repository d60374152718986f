"""Pipelines for the signal tests, run in a child process in the test's directory.

Factories, loadable with ``riprap run _signal_worker.py:endless`` (or another
name) or run as a script with the factory's name as argument:

``endless``
    Counts forever into an SQLite table, checkpointing often: only a signal
    ends it. Its source creates ``source-opening`` when start-up reaches it.
``lettered``
    Like ``endless`` through an async step that refuses every seventh number;
    those become dead letters in a JSON Lines store, written in a worker
    thread (as every built-in store does), so the step's runner is often
    between receiving a batch and sending it on when a signal comes.
``slow_start``
    Like ``endless``, but its source takes a while to open, as a connection
    to a broker does: signals land during start-up.
``blocked``
    Its sink never finishes a write (it creates ``sink-entered`` first, so the
    test knows the run is under way); a graceful stop can never drain, and
    the drain timeout is an hour, so only an abort ends it.

As a script it runs the pipeline with :func:`riprap.run`, writes the report to
stdout as one JSON object, and exits 0 when the run completed or was stopped
cleanly, 1 otherwise (aborted or failed). It ignores SIGINT and SIGTERM outside
the run (:func:`riprap.run` handles them during it and puts the previous
handlers back): a signal after the run must not kill it before the report is out.
"""

from __future__ import annotations

import itertools
import signal
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import orjson

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.memory import IterableSource
from riprap.connectors.sqlite import SqliteSink

if TYPE_CHECKING:
    from collections.abc import Callable

CHECKPOINTS = "checkpoints.db"
DATABASE = "out.db"
DEAD_LETTERS = "dead-letters.jsonl"
TABLE = "numbers"
PARTITION = "numbers"
SINK_ENTERED = "sink-entered"
SOURCE_OPENING = "source-opening"
LETTER_EVERY = 7
"""``lettered`` refuses the numbers divisible by this."""
SLOW_OPEN = 0.03
"""Seconds the ``slow_start`` source takes to open."""


def row(n: int) -> dict[str, Any]:
    """The row written for the ``n``-th number."""
    return {"id": n, "double": 2 * n}


async def checked_row(n: int) -> dict[str, Any]:
    """The row for ``n``, asynchronously; a multiple of ``LETTER_EVERY`` is a data error."""
    await anyio.lowlevel.checkpoint()
    if n % LETTER_EVERY == 0:
        raise riprap.DataError(f"{n} is a multiple of {LETTER_EVERY}")
    return row(n)


class OpeningSource:
    """Numbers 0, 1, 2, ... that mark the start of their opening and may take a while to open."""

    def __init__(self, open_seconds: float = 0.0) -> None:
        self.name = "numbers"
        self._numbers = IterableSource(self.name, itertools.count(), partition=PARTITION)
        self._open_seconds = open_seconds

    async def open(self, context: riprap.SourceContext) -> None:
        """Create ``source-opening``, take ``open_seconds``, then start at the checkpoint."""
        await anyio.Path(SOURCE_OPENING).touch()
        await anyio.sleep(self._open_seconds)
        await self._numbers.open(context)

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        """The next numbers."""
        return await self._numbers.read(max_records)

    async def aclose(self) -> None:
        """Nothing is held open."""
        await self._numbers.aclose()


def counting(name: str, source: OpeningSource) -> riprap.Pipeline:
    """Numbers from ``source`` into SQLite, in small batches, checkpointing often."""
    return (
        riprap.Pipeline(
            name,
            checkpoint=riprap.checkpoints.SqliteCheckpoints(CHECKPOINTS),
            checkpoint_interval=0.05,
            batch_size=10,
            max_in_flight=50,
        )
        .source(source)
        .map("row", row)
        .sink(SqliteSink(DATABASE, table=TABLE, key="id"))
    )


def endless() -> riprap.Pipeline:
    """Numbers 0, 1, 2, ... into SQLite, in small batches, until a signal stops it."""
    return counting("endless", OpeningSource())


def slow_start() -> riprap.Pipeline:
    """``endless`` with a source that takes ``SLOW_OPEN`` seconds to open."""
    return counting("slow_start", OpeningSource(SLOW_OPEN))


def lettered() -> riprap.Pipeline:
    """Numbers through an async step that dead-letters every seventh one, into SQLite."""
    return (
        riprap.Pipeline(
            "lettered",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(CHECKPOINTS),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(DEAD_LETTERS),
            checkpoint_interval=0.05,
            batch_size=10,
            max_in_flight=50,
        )
        .source(OpeningSource())
        .map("check", checked_row, concurrency=4)
        .sink(SqliteSink(DATABASE, table=TABLE, key="id"))
    )


class BlockingSink:
    """A sink whose first write never returns (until cancelled)."""

    name = "blocking"
    idempotent = True

    async def open(self) -> None:
        """Nothing to open."""
        await anyio.lowlevel.checkpoint()

    async def write(self, batch: riprap.Batch) -> None:
        """Mark that a write began, then wait forever."""
        await anyio.Path(SINK_ENTERED).touch()
        await anyio.sleep_forever()

    async def flush(self) -> None:
        """Nothing is buffered."""
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Nothing to close."""
        await anyio.lowlevel.checkpoint()


def blocked() -> riprap.Pipeline:
    """Numbers into a sink that blocks forever; draining would take an hour."""
    return (
        riprap.Pipeline(
            "blocked",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(CHECKPOINTS),
            checkpoint_interval=0.05,
            batch_size=10,
            max_in_flight=50,
            drain_timeout=3600.0,
        )
        .source(IterableSource("numbers", itertools.count(), partition=PARTITION))
        .sink(BlockingSink())
    )


FACTORIES: dict[str, Callable[[], riprap.Pipeline]] = {
    "endless": endless,
    "lettered": lettered,
    "slow_start": slow_start,
    "blocked": blocked,
}


def main(argv: list[str]) -> int:
    """Run the named pipeline with signal handling; print its report as JSON."""
    (name,) = argv
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)  # riprap.run handles them during the run
    report = riprap.run(FACTORIES[name]())
    summary = {
        "outcome": report.outcome,
        "records_in": report.records_in,
        "records_out": report.records_out,
        "positions": dict(report.positions),
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if report.outcome in ("completed", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
