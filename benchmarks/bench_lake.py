"""JSON Lines to Parquet and to Delta Lake: riprap against a plain pyarrow loop doing the same work.

Workload: read a JSON Lines file of orders, parse each line with orjson, turn
the records into Arrow tables of a declared schema, and write Parquet files of
``FILE_ROWS`` rows (or append them to a Delta table, one commit per
``FILE_ROWS`` rows). The plain loop reads the file in chunks of the pipeline's
batch size and does exactly that with pyarrow and deltalake, nothing else: the
ratio (loop time / riprap time, wall clock and CPU) shows what riprap's
checkpoints, acks, schema checks and exactly-once bookkeeping cost on top.
Target: 0.80 or more.

Run: ``python -m benchmarks.bench_lake [--records N] [--repeat K]``. The
suite runs the same work one implementation per process as W7 (Parquet) and
W8 (Delta): see :func:`child_impls`.
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import WriterProperties, write_deltalake

import riprap
from benchmarks._child import start_measuring
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.lake import DeltaSink, ParquetSink

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from benchmarks._child import Impl, Result

BATCH = 10_000
FILE_ROWS = 50_000
ZSTD = WriterProperties(compression="ZSTD")
"""The codec both sides write with (the sinks' default)."""
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("customer", pa.string()),
        ("amount", pa.float64()),
        ("country", pa.string()),
        ("ts", pa.int64()),
    ]
)


def make_input(path: Path, n: int, *, seed: int = 7) -> None:
    """``n`` JSON order lines at ``path``."""
    rng = random.Random(seed)
    countries = ["de", "fr", "nl", "pl", "es", "it"]
    with path.open("wb") as out:
        for i in range(n):
            order = {
                "id": i,
                "customer": f"customer-{rng.randrange(10_000)}",
                "amount": rng.randrange(100, 1_000_000) / 100,
                "country": rng.choice(countries),
                "ts": 1_700_000_000_000 + i,
            }
            out.write(orjson.dumps(order) + b"\n")


def chunks(path: Path) -> Iterator[list[bytes]]:
    """The file's lines in chunks of ``BATCH``."""
    with path.open("rb") as lines:
        while chunk := list(itertools.islice(lines, BATCH)):
            yield chunk


def loop_parquet(path: Path, out: Path) -> None:
    """The plain loop: parse, build tables, write a Parquet file per ``FILE_ROWS`` rows."""
    out.mkdir()
    pending: list[pa.Table] = []
    rows = files = 0

    def cut() -> None:
        nonlocal rows, files
        pq.write_table(pa.concat_tables(pending), out / f"{files:05d}.parquet", compression="zstd")
        pending.clear()
        rows, files = 0, files + 1

    for chunk in chunks(path):
        pending.append(pa.Table.from_pylist([orjson.loads(line) for line in chunk], schema=SCHEMA))
        rows += len(chunk)
        if rows >= FILE_ROWS:
            cut()
    if pending:
        cut()


def loop_delta(path: Path, out: Path) -> None:
    """The plain loop: parse, build tables, append to a Delta table per ``FILE_ROWS`` rows."""
    pending: list[pa.Table] = []
    rows = 0
    for chunk in chunks(path):
        pending.append(pa.Table.from_pylist([orjson.loads(line) for line in chunk], schema=SCHEMA))
        rows += len(chunk)
        if rows >= FILE_ROWS:
            write_deltalake(
                str(out), pa.concat_tables(pending), mode="append", writer_properties=ZSTD
            )
            pending.clear()
            rows = 0
    if pending:
        write_deltalake(str(out), pa.concat_tables(pending), mode="append", writer_properties=ZSTD)


def pipeline(path: Path, sink: riprap.Sink, state: Path) -> riprap.Pipeline:
    """The riprap pipeline: file -> parse -> sink, checkpointed in ``state``."""
    return (
        riprap.Pipeline(
            "bench-lake",
            checkpoint_path=str(state),
            batch_size=BATCH,
            # Room for a whole file in the sink and one batch read ahead: the next
            # batch is parsed while a file is stored (in a worker thread), which
            # the loop does one after the other. More room only keeps more parsed
            # records alive, which costs CPU (memory, the garbage collector) and gains nothing.
            max_in_flight=FILE_ROWS + BATCH,
        )
        .source(JsonLinesSource(str(path)))
        .map("parse", orjson.loads)
        .sink(sink)
    )


def riprap_parquet(path: Path, out: Path) -> None:
    """riprap: JSON Lines -> ParquetSink (files cut at ``FILE_ROWS``)."""
    sink = ParquetSink(out, schema=SCHEMA, max_rows=FILE_ROWS)
    report = anyio.run(pipeline(path, sink, out.with_suffix(".db")).run)
    assert report.outcome == "completed"


def riprap_delta(path: Path, out: Path) -> None:
    """riprap: JSON Lines -> DeltaSink (a commit per ``FILE_ROWS`` rows)."""
    sink = DeltaSink(out, new_columns="refuse", schema=SCHEMA, max_rows=FILE_ROWS)
    report = anyio.run(pipeline(path, sink, out.with_suffix(".db")).run)
    assert report.outcome == "completed"


def best(
    run: Callable[[Path, Path], None], path: Path, work: Path, repeat: int
) -> tuple[float, float]:
    """The best wall and CPU (all threads) times of ``repeat`` runs, each into a fresh output.

    CPU time says what the work costs when other processes compete for the
    cores (wall time then mostly measures the competition).
    """
    walls, cpus = [], []
    for k in range(repeat):
        out = work / f"{run.__name__}-{k}"
        wall, cpu = time.perf_counter(), time.process_time()
        run(path, out)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        shutil.rmtree(out, ignore_errors=True)
    return min(walls), min(cpus)


def child_impls(target: str) -> dict[str, Impl]:
    """The suite's implementations for ``target`` (``"parquet"`` or ``"delta"``): loop, riprap."""
    loop, engine = (
        (loop_parquet, riprap_parquet) if target == "parquet" else (loop_delta, riprap_delta)
    )
    return {"pyarrow loop": _measured(loop), "riprap": _measured(engine)}


def _measured(run: Callable[[Path, Path], None]) -> Impl:
    """One measured run of ``run`` over ``--records`` orders written to a temporary file."""

    def impl(args: argparse.Namespace) -> Result:
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            path = work / "orders.jsonl"
            make_input(path, args.records)
            start_measuring()
            wall, cpu = time.perf_counter(), time.process_time()
            run(path, work / "out")
            seconds = time.perf_counter() - wall
            cpu_s = time.process_time() - cpu
        return {
            "seconds": seconds,
            "count": args.records,
            "records_per_cpu_s": args.records / cpu_s,
        }

    return impl


def main() -> None:
    """Measure both sinks against their loops and print records/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        path = work / "orders.jsonl"
        make_input(path, args.records)
        print(f"{args.records:,} records, batches of {BATCH:,}, files of {FILE_ROWS:,} rows")
        print(f"{'target':<10}{'loop rec/s':>14}{'riprap rec/s':>14}{'ratio':>8}{'cpu ratio':>11}")
        for name, loop, engine in (
            ("parquet", loop_parquet, riprap_parquet),
            ("delta", loop_delta, riprap_delta),
        ):
            plain, plain_cpu = best(loop, path, work, args.repeat)
            ours, our_cpu = best(engine, path, work, args.repeat)
            rate = args.records / plain, args.records / ours
            ratios = plain / ours, plain_cpu / our_cpu
            print(
                f"{name:<10}{rate[0]:>14,.0f}{rate[1]:>14,.0f}{ratios[0]:>8.2f}{ratios[1]:>11.2f}"
            )


if __name__ == "__main__":
    main()
