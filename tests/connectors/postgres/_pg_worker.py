"""Child process for the PostgreSQL crash test: CDC of ``items`` -> audit -> ``items_copy``.

Usage: ``python _pg_worker.py DSN CHECKPOINT``. CHECKPOINT is an SQLite file
(checkpoints every 0.1 s). The audit step records every change event it sees
in the ``audit`` table (idempotently), so the test can tell a lost change from
a replayed one. It runs until killed or stopped by SIGTERM.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import asyncpg

import riprap
import riprap.checkpoints
from riprap.connectors.postgres import PostgresCDCSource, PostgresSink

if TYPE_CHECKING:
    from riprap import Batch, StageContext
    from riprap.lowlevel import Emit


class Audit:
    """Writes ``(id, version, op)`` of each event to ``audit`` before passing the batch on."""

    step_id = "audit"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None

    async def open(self, context: StageContext) -> None:
        """Connect to the database of the audit table."""
        self._conn = await asyncpg.connect(self._dsn)

    async def process(self, batch: Batch, emit: Emit) -> None:
        """Record the batch's events, then hand the batch on unchanged."""
        rows = []
        for event in batch.items:
            row = event["after"] or event["before"]
            rows.append((row["id"], row.get("version", -1), event["op"]))
        await self._conn.executemany(
            "INSERT INTO audit VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", rows
        )
        await emit(batch)

    async def finish(self, emit: Emit) -> None:
        """Disconnect."""
        if self._conn is not None:
            await self._conn.close()

    def snapshot(self) -> Any:
        """No state: the audit table is the state."""
        return None

    def restore(self, state: Any) -> None:
        """Nothing to restore."""


def main(dsn: str, checkpoints: str) -> None:
    """Run the pipeline until stopped; print the run report."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    pipeline = (
        riprap.Pipeline(
            "pg-crash",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(checkpoints),
            checkpoint_interval=0.1,
            batch_size=500,
            max_in_flight=2_000,
        )
        .source(PostgresCDCSource(dsn, slot="crash", publication="pub", poll_interval=0.02))
        .stage(Audit(dsn))
        .sink(PostgresSink(dsn, "items_copy", cdc=True))
    )
    report = riprap.run(pipeline)
    sys.stdout.write(report.format() + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
