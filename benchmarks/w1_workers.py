"""W1 with worker processes: ``--workers 1`` against ``--workers 2``, the input split.

The workload is W1's (:mod:`benchmarks.bench_memory`: parse with orjson, drop
null emails, add ``amount_cents``, serialise, count) on the same records,
written once to ``--files`` JSON Lines files that :class:`JsonLinesSource`
hands over as raw line bytes (W1's input). Each run goes through
:func:`riprap.run_workers` like ``riprap run FILE --workers N``: every worker
is a fresh process that loads this file and reads the files that hash to it.
The file names are chosen so that the hash gives two workers the same number
of files (with few files a hash need not balance: see the operations guide).
One worker and two alternate, ``--repeat`` times each.

Two times per run: ``wall`` from the supervisor's start to its end (process
start-up and imports included, about the same for both counts), and ``run``,
the report's duration (the slowest worker, from its start to its final
checkpoint: the part that workers divide). The speed-up of each is the median
of one worker's times over the median of two workers', with the range of the
pairwise ratios as the spread. On a machine whose cores are shared with other
work, the spread is the honest part, and the third figure says what the
split costs whatever the load: ``cpu``, the CPU seconds of all the workers
together (start-up included), whose ratio is 1 when two workers do the
work of one for no extra CPU.

Run: ``python -m benchmarks.w1_workers [--records N] [--files F] [--repeat K] [--json]``
from the repository's root (the workers load this file by path).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

import riprap
import riprap.checkpoints
from benchmarks.bench_memory import CountSink, add_cents, has_email, make_records
from riprap.connectors.files import JsonLinesSource

INPUT_ENV = "RIPRAP_W1_WORKERS_INPUT"
"""How the input folder reaches the worker processes."""


def pipeline() -> riprap.Pipeline:
    """W1 at the defaults over the files in ``RIPRAP_W1_WORKERS_INPUT``, checkpoints in memory."""
    folder = os.environ[INPUT_ENV]
    return (
        riprap.Pipeline("w1-workers", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(JsonLinesSource(os.path.join(folder, "*.jsonl")))
        .map("parse", orjson.loads)
        .filter("has_email", has_email)
        .map("add_cents", add_cents)
        .map("serialize", orjson.dumps)
        .sink(CountSink())
    )


def balanced_names(folder: str, files: int) -> list[str]:
    """``files`` paths in ``folder``, half of which hash to each of two workers."""
    per_worker: dict[int, list[str]] = {0: [], 1: []}
    n = 0
    while min(map(len, per_worker.values())) < files // 2:
        path = os.path.join(folder, f"w1-{n:04}.jsonl")
        share = per_worker[zlib.crc32(path.encode()) % 2]
        if len(share) < files // 2:
            share.append(path)
        n += 1
    return sorted(per_worker[0] + per_worker[1])


def write_input(folder: str, records: int, files: int) -> None:
    """W1's records, one JSON document a line, dealt out to ``files`` files in turn."""
    rows = make_records(records)
    for i, path in enumerate(balanced_names(folder, files)):
        Path(path).write_bytes(b"".join(row + b"\n" for row in rows[i::files]))


def measure(workers: int, records: int) -> dict[str, float]:
    """One run with ``workers`` processes over the input: wall and run seconds, records written."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    result = riprap.run_workers(f"{Path(__file__)}:pipeline", workers=workers)
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    report = result.report
    if report.outcome != "completed" or report.records_in != records:
        raise SystemExit(f"{workers} workers: {report.outcome}, {report.records_in} read")
    return {"wall": wall, "run": report.duration, "cpu": cpu, "written": report.records_out}


def _children_cpu() -> float:
    """User and system CPU seconds of the ended child processes (the workers) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def speed_up(ones: list[float], twos: list[float]) -> dict[str, float]:
    """The ratio of the medians, and the lowest and highest pairwise ratio."""
    pairs = [one / two for one, two in zip(ones, twos, strict=True)]
    return {
        "ratio": statistics.median(ones) / statistics.median(twos),
        "low": min(pairs),
        "high": max(pairs),
    }


def main(argv: list[str] | None = None) -> None:
    """Measure, then print a summary (or one JSON object with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=16, help="input files (even)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="w1-workers-") as folder:
        write_input(folder, args.records, args.files)
        os.environ[INPUT_ENV] = folder
        for _ in range(args.repeat):
            for workers in (1, 2):
                runs[workers].append(measure(workers, args.records))
    result: dict[str, Any] = {
        "records": args.records,
        "files": args.files,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
    }
    for time_kind in ("wall", "run", "cpu"):
        ones = [r[time_kind] for r in runs[1]]
        twos = [r[time_kind] for r in runs[2]]
        result[time_kind] = {
            "one_worker_s": ones,
            "two_workers_s": twos,
            "speed_up": speed_up(ones, twos),
        }
    print(orjson.dumps(result).decode() if args.json else summary(result))


def summary(result: dict[str, Any]) -> str:
    """The measurements as a few lines of text: the times of each run and the ratios."""
    lines = [
        f"W1, {result['records']:,} records in {result['files']} files, "
        f"{result['repeat']} runs each, {result['cpus']} CPUs"
    ]
    for time_kind in ("wall", "run", "cpu"):
        figures = result[time_kind]
        s = figures["speed_up"]
        ones = ", ".join(f"{t:.2f}" for t in figures["one_worker_s"])
        twos = ", ".join(f"{t:.2f}" for t in figures["two_workers_s"])
        lines.append(
            f"  {time_kind:<4} 1 worker [{ones}] s, 2 workers [{twos}] s: "
            f"x{s['ratio']:.2f} (pairs x{s['low']:.2f}..x{s['high']:.2f})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
