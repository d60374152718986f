"""Scaling: throughput and memory growth of riprap as the input grows.

Each run is a fresh child process of the suite's workloads (W1 in memory, W2
Kafka -> Kafka). The child builds its input first, then measures; "growth" is
its peak RSS minus its RSS once the input was built, so it is what riprap
itself holds while it runs. Bounded memory means growth stays flat as the
input grows fivefold.

Run: ``python -m benchmarks.scaling [--w1 1000000,5000000] [--w2 500000,2000000] [--runs 1]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from typing import Any

from benchmarks.suite import WORKLOADS, Sizes, Workload, run_child

W1_IMPLS = ("riprap", "riprap embedded")
W2_IMPLS = ("riprap",)


def _workload(key: str) -> Workload:
    return next(w for w in WORKLOADS if w.key == key)


def _sizes(key: str, records: int) -> Sizes:
    return Sizes(w1_records=records) if key == "W1" else Sizes(w2_records=records)


def measure(
    key: str, impls: tuple[str, ...], sizes: list[int], runs: int, extra: list[str]
) -> list[dict[str, Any]]:
    """One row per implementation and size: medians of ``runs`` fresh-process runs."""
    workload = _workload(key)
    rows = []
    for records in sizes:
        for impl in impls:
            results = [
                run_child(sys.executable, workload, impl, _sizes(key, records), extra)
                for _ in range(runs)
            ]
            failed = [r for r in results if "records_per_s" not in r]
            if failed:
                reason = failed[0].get("error") or failed[0].get("skipped")
                rows.append({"workload": key, "impl": impl, "records": records, "error": reason})
                continue
            growth = [r["peak_rss_mib"] - r.get("rss_start_mib", 0.0) for r in results]
            rows.append(
                {
                    "workload": key,
                    "impl": impl,
                    "records": records,
                    "records_per_s": statistics.median(r["records_per_s"] for r in results),
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                    "growth_mib": statistics.median(growth),
                }
            )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The scaling table."""
    print(f"{'workload':<10}{'implementation':<18}{'records':>11}{'records/s':>12}{'growth':>10}")
    for row in rows:
        head = f"{row['workload']:<10}{row['impl']:<18}{row['records']:>11,}"
        if "error" in row:
            print(f"{head}  failed: {row['error']}")
        else:
            print(f"{head}{row['records_per_s']:>12,.0f}{row['growth_mib']:>6.0f} MiB")


def _sizes_arg(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--w1", type=_sizes_arg, default=[1_000_000, 5_000_000])
    parser.add_argument("--w2", type=_sizes_arg, default=[500_000, 2_000_000])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    rows = measure("W1", W1_IMPLS, args.w1, args.runs, [])
    if args.w2:
        with contextlib.ExitStack() as stack:
            try:
                from riprap.testing import kafka_broker

                extra = ["--bootstrap", stack.enter_context(kafka_broker())]
            except (ImportError, RuntimeError, OSError) as error:
                print(f"W2 skipped: no Kafka broker ({error})", file=sys.stderr)
            else:
                rows += measure("W2", W2_IMPLS, args.w2, args.runs, extra)
    print_rows(rows)


if __name__ == "__main__":
    main()
