"""Pipelines for the signal tests, run in a child process in the test's directory.

Two factories, loadable with ``riprap run _signal_worker.py:endless`` (or
``:blocked``) or run as a script with the factory's name as argument:

``endless``
    Counts forever into an SQLite table, checkpointing often: only a signal
    ends it.
``blocked``
    Its sink never finishes a write (it creates ``sink-entered`` first, so the
    test knows the run is under way); a graceful stop can never drain, and
    the drain timeout is an hour, so only an abort ends it.

As a script it runs the pipeline with :func:`riprap.run`, writes the report to
stdout as one JSON object, and exits 0 when the run completed or was stopped
cleanly, 1 otherwise (aborted or failed).
"""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import orjson

import riprap
from riprap.connectors.memory import IterableSource
from riprap.connectors.sqlite import SqliteSink

if TYPE_CHECKING:
    from collections.abc import Callable

CHECKPOINTS = "checkpoints.db"
DATABASE = "out.db"
TABLE = "numbers"
PARTITION = "numbers"
SINK_ENTERED = "sink-entered"


def row(n: int) -> dict[str, Any]:
    """The row written for the ``n``-th number."""
    return {"id": n, "double": 2 * n}


def endless() -> riprap.Pipeline:
    """Numbers 0, 1, 2, ... into SQLite, in small batches, until a signal stops it."""
    return (
        riprap.Pipeline(
            "endless",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(CHECKPOINTS),
            checkpoint_interval=0.05,
            batch_size=10,
            max_in_flight=50,
        )
        .source(IterableSource("numbers", itertools.count(), partition=PARTITION))
        .map("row", row)
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


FACTORIES: dict[str, Callable[[], riprap.Pipeline]] = {"endless": endless, "blocked": blocked}


def main(argv: list[str]) -> int:
    """Run the named pipeline with signal handling; print its report as JSON."""
    (name,) = argv
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
