"""W6 for the suite: a JSON Lines file upserted into PostgreSQL, one implementation per process.

The input is ``--records`` rows ``{id, name, qty, price}`` over half as many
ids (each id is written twice: an insert, then an update), written to a JSON
Lines file before the clock starts. Both sides parse every line with orjson
and write batches of riprap's default size (1,000), each batch one
transaction, into a fresh table:

* **asyncpg loop** (the limit): per batch, the last row per id, binary COPY of
  the text values into a temporary table and one
  ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``.
* **riprap**: ``JsonLinesSource(path, decode=True)`` -> ``PostgresSink`` with
  every option at its default (the same COPY + merge plus key checks, a pool
  of 4, SQLite checkpoints), run with ``riprap.run`` as a script runs it.

Each run gets a database of its own (created before the clock, dropped
after), and the child checks that the table holds every id with its last
write. The suite starts one server (``riprap.testing.postgres_server``, the
dev extra's binaries, ``fsync=off``, on the same cores) and passes ``--dsn``;
standalone, the child starts its own.

Run: ``python -m benchmarks.w6_postgres [--impl NAME] [--records N] [--dsn DSN] [--json]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

import riprap
from benchmarks._child import Result, Skipped, child_main, peak_rss_mib, start_measuring
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.postgres import PostgresSink
from riprap.testing import postgres_server

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

BATCH = 1_000
"""Records per batch on both sides: riprap's default ``batch_size``."""
TABLE = "CREATE TABLE IF NOT EXISTS target (id int PRIMARY KEY, name text, qty int, price numeric)"
STAGE = "CREATE TEMP TABLE IF NOT EXISTS stage (id text, name text, qty text, price text)"
MERGE = (
    "INSERT INTO target (id, name, qty, price) "
    "SELECT id::int, name, qty::int, price::numeric FROM stage "
    "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, qty = EXCLUDED.qty, "
    "price = EXCLUDED.price"
)


def record(i: int, ids: int) -> dict[str, Any]:
    """Row ``i`` of the input: ids repeat every ``ids`` rows, so later rows update earlier ones."""
    return {"id": i % ids, "name": f"item-{i}", "qty": i % 7, "price": f"{i % 100}.25"}


def write_input(path: Path, n: int) -> dict[int, int]:
    """Write ``n`` rows over ``n // 2`` ids as JSON Lines; ``{id: qty}`` of each id's last write.

    Each id is written twice (an insert, then an update); rows are made one at
    a time, so the child's peak RSS is its run's and not the input's.
    """
    last: dict[int, int] = {}
    ids = max(n // 2, 1)
    with path.open("wb") as out:
        for i in range(n):
            row = record(i, ids)
            out.write(orjson.dumps(row) + b"\n")
            last[row["id"]] = row["qty"]
    return last


def batches(path: Path, size: int) -> Iterator[list[Any]]:
    """The file's records, parsed, ``size`` at a time."""
    with path.open("rb") as lines:
        batch: list[Any] = []
        for line in lines:
            batch.append(orjson.loads(line))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


async def raw_loop(dsn: str, path: Path, batch: int = BATCH) -> None:
    """The asyncpg COPY + merge loop over the file, one transaction per batch."""
    conn = await asyncpg.connect(dsn)
    try:
        for chunk in batches(path, batch):
            last = {row["id"]: row for row in chunk}  # one write per key and statement
            rows = [(str(r["id"]), r["name"], str(r["qty"]), r["price"]) for r in last.values()]
            async with conn.transaction():
                await conn.execute(STAGE + " ON COMMIT DELETE ROWS")
                await conn.copy_records_to_table("stage", records=rows)
                await conn.execute(MERGE)
    finally:
        await conn.close()


def riprap_pipeline(dsn: str, path: Path, checkpoints: Path) -> riprap.Pipeline:
    """File -> ``PostgresSink`` at the defaults (SQLite checkpoints under ``checkpoints``)."""
    return (
        riprap.Pipeline("bench-w6", checkpoint_path=str(checkpoints / "checkpoints.db"))
        .source(JsonLinesSource(str(path), decode=True))
        .sink(PostgresSink(dsn, "target"))
    )


def run_riprap(dsn: str, path: Path, checkpoints: Path) -> None:
    """Run the pipeline to the end of the file with ``riprap.run``."""
    riprap.run(riprap_pipeline(dsn, path, checkpoints), handle_signals=False)


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    """The server the suite passed in, or one of our own for a standalone run."""
    if dsn:
        yield dsn
        return
    with contextlib.ExitStack() as stack:
        try:
            own = stack.enter_context(postgres_server())
        except RuntimeError as error:
            raise Skipped(f"no PostgreSQL server: {error}") from None
        yield own


@contextlib.contextmanager
def fresh_database(dsn: str) -> Iterator[str]:
    """A new database holding an empty ``target`` table; its DSN. Dropped on exit."""
    name = f"w6_{uuid.uuid4().hex[:12]}"
    own = dsn.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_execute(dsn, f"CREATE DATABASE {name}"))
    try:
        asyncio.run(_execute(own, TABLE))
        yield own
    finally:
        asyncio.run(_execute(dsn, f"DROP DATABASE {name} WITH (FORCE)"))


async def _execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def table_state(dsn: str) -> dict[int, int]:
    """``{id: qty}`` of every row of ``target``."""
    conn = await asyncpg.connect(dsn)
    try:
        return {row["id"]: row["qty"] for row in await conn.fetch("SELECT id, qty FROM target")}
    finally:
        await conn.close()


def measure(name: str, args: argparse.Namespace) -> Result:
    """Write the input, then time one run of implementation ``name`` and check the table."""
    with (
        server(args.dsn) as dsn,
        fresh_database(dsn) as own,
        tempfile.TemporaryDirectory(prefix="w6-") as work,
    ):
        path = Path(work) / "input.jsonl"
        expected = write_input(path, args.records)
        rss_start = start_measuring()
        cpu = time.process_time()
        started = time.perf_counter()
        if name == "riprap":
            run_riprap(own, path, Path(work))
        else:
            asyncio.run(raw_loop(own, path))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        peak = peak_rss_mib()
        if asyncio.run(table_state(own)) != expected:
            raise SystemExit(f"{name}: the table does not hold every id's last write")
    return {
        "seconds": seconds,
        "count": len(expected),
        "batch": BATCH,
        "records_per_cpu_s": round(args.records / cpu) if cpu > 0 else None,
        "rss_start_mib": round(rss_start, 1),
        "peak_rss_mib": peak,
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="the server's DSN (default: start one)")


IMPLEMENTATIONS = {name: functools.partial(measure, name) for name in ("asyncpg loop", "riprap")}


def main(argv: list[str] | None = None) -> None:
    child_main(
        __doc__, IMPLEMENTATIONS, argv, default_records=500_000, add_arguments=_add_arguments
    )


if __name__ == "__main__":
    main()
