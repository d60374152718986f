"""W6: upserts into PostgreSQL, riprap's sink against a raw asyncpg loop; and CDC throughput.

Both upsert sides write the same records (``{id, name, qty, price}``, ids
repeating so half the writes are updates) into the same table with the same
batch size, each batch one transaction:

* **asyncpg loop** (the limit): per batch, binary COPY of the text values into
  a temporary table and one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``.
* **riprap**: an in-memory source -> ``PostgresSink`` (the same COPY + merge,
  plus key checks and per-batch de-duplication), checkpoints in memory.

**CDC**: rows inserted in transactions of 1,000 are read back from a logical
replication slot by ``PostgresCDCSource`` through a pipeline into a counting
sink: change events per second, decoding included.

The server is a throw-away one from ``riprap.testing.postgres_server`` (the dev
extra's binaries, ``fsync=off``) on the same cores as the benchmark.

Run: ``python -m benchmarks.w6_postgres [--records 500000] [--batch 5000] [--cdc 200000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg

import riprap
import riprap.checkpoints
from benchmarks.bench_memory import CountSink
from riprap.connectors.memory import IterableSource
from riprap.connectors.postgres import PostgresCDCSource, PostgresSink
from riprap.testing import postgres_server

TABLE = "CREATE TABLE IF NOT EXISTS target (id int PRIMARY KEY, name text, qty int, price numeric)"
STAGE = "CREATE TEMP TABLE IF NOT EXISTS stage (id text, name text, qty text, price text)"
MERGE = (
    "INSERT INTO target (id, name, qty, price) "
    "SELECT id::int, name, qty::int, price::numeric FROM stage "
    "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, qty = EXCLUDED.qty, "
    "price = EXCLUDED.price"
)


def make_records(n: int) -> list[dict[str, Any]]:
    """``n`` rows over ``n // 2`` ids: every id is written twice (an insert, then an update)."""
    return [
        {"id": i % (n // 2), "name": f"item-{i}", "qty": i % 7, "price": f"{i % 100}.25"}
        for i in range(n)
    ]


async def raw_loop(dsn: str, records: list[dict[str, Any]], batch: int) -> float:
    """The asyncpg COPY + merge loop; returns seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for at in range(0, len(records), batch):
            chunk = records[at : at + batch]
            last = {row["id"]: row for row in chunk}  # one write per key and statement
            rows = [(str(r["id"]), r["name"], str(r["qty"]), r["price"]) for r in last.values()]
            async with conn.transaction():
                await conn.execute(STAGE + " ON COMMIT DELETE ROWS")
                await conn.copy_records_to_table("stage", records=rows)
                await conn.execute(MERGE)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def riprap_sink(dsn: str, records: list[dict[str, Any]], batch: int) -> float:
    """In-memory source -> PostgresSink; returns seconds."""
    pipeline = (
        riprap.Pipeline(
            "bench-w6", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=batch
        )
        .source(IterableSource("rows", records))
        .sink(PostgresSink(dsn, "target", pool_size=1))
    )
    started = time.perf_counter()
    await pipeline.run()
    return time.perf_counter() - started


async def cdc(dsn: str, rows: int) -> float:
    """Seconds for the CDC source to hand over ``rows`` inserts already waiting in its slot.

    Raises:
        RuntimeError: Not every insert arrived within 600 s.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE events (id int PRIMARY KEY, body text)")
        await conn.execute("CREATE PUBLICATION bench FOR TABLE events")
        await conn.execute("SELECT pg_create_logical_replication_slot('bench', 'pgoutput')")
        for at in range(0, rows, 1_000):
            await conn.execute(
                "INSERT INTO events SELECT i, repeat('x', 50) FROM generate_series($1::int, $2) i",
                at,
                min(at + 1_000, rows) - 1,
            )
    finally:
        await conn.close()
    source = PostgresCDCSource(dsn, slot="bench", publication="bench", snapshot=False)
    sink = CountSink()
    pipeline = (
        riprap.Pipeline("bench-cdc", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(source)
        .sink(sink)
    )
    started = time.perf_counter()
    async with pipeline.open() as running:
        for _ in range(60_000):  # at most 600 s
            if sink.count >= rows:
                break
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
        running.stop()
    if sink.count < rows:
        raise RuntimeError(f"the CDC source handed over {sink.count} of {rows} inserts")
    return seconds


async def main(args: argparse.Namespace, dsn: str) -> None:
    records = make_records(args.records)
    conn = await asyncpg.connect(dsn)
    await conn.execute(TABLE)
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, run in (("asyncpg loop", raw_loop), ("riprap", riprap_sink)):
            await conn.execute("TRUNCATE target")
            seconds = await run(dsn, records, args.batch)
            best[name] = min(best.get(name, seconds), seconds)
    await conn.close()
    print(f"W6 upsert: {args.records:,} records, batch {args.batch:,}, best of {args.repeat}")
    for name, seconds in best.items():
        print(f"  {name:<14} {seconds:7.2f} s  {args.records / seconds:>10,.0f} records/s")
    print(f"  riprap / loop  {best['asyncpg loop'] / best['riprap']:.2f}")
    if args.cdc:
        seconds = await cdc(dsn, args.cdc)
        print(
            f"W6 CDC: {args.cdc:,} inserts read in {seconds:.2f} s: "
            f"{args.cdc / seconds:,.0f} events/s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cdc", type=int, default=200_000)
    arguments = parser.parse_args()
    with postgres_server() as server_dsn:
        asyncio.run(main(arguments, server_dsn))
