"""What every workload module shares when the suite runs it in a fresh process.

A workload module maps implementation names to functions that do one measured
run and return a :data:`Result` (``seconds``, ``count`` and any extra figures).
:func:`child_main` gives each module the same command line::

    python -m benchmarks.<module> --impl NAME --records N --json

and prints one JSON line per implementation, with the process's peak RSS
added, so the suite can run every implementation in a process of its own and
read a peak that belongs to that run alone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import resource
import sys
from collections.abc import Callable, Mapping
from typing import Any

Result = dict[str, Any]
"""One run's figures: ``seconds`` and ``count`` always, more per workload."""

Impl = Callable[[argparse.Namespace], Result]
"""Does one measured run with the parsed command line; may raise :class:`Skipped`."""


class Skipped(Exception):
    """The implementation cannot run here (a peer is not installed, or needs a broker)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _status_mib(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` in MiB, ``None`` off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mib() -> float:
    """Resident set size now, in MiB (0 where the OS does not tell)."""
    return _status_mib("VmRSS") or 0.0


def peak_rss_mib() -> float:
    """The highest resident set size this process has had, in MiB."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def make_input(n: int) -> list[bytes]:
    """The workload's records (right-sized bytes: see ``bench_memory.make_records``)."""
    from benchmarks.bench_memory import make_records

    return make_records(n)


def start_measuring() -> float:
    """Give freed memory back and restart the peak RSS count; return the RSS now (MiB).

    Called once the input is built and warmed up, so the peak a child reports
    is the measured run's (input included) and not the building of the input.
    """
    gc.collect()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap resident
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    return rss_mib()


def as_a_riprap_run_sets() -> None:
    """Apply the process-wide settings every riprap run applies, for a limit that runs without
    riprap: freed heap kept for reuse, and the collector's raised threshold."""
    import riprap
    from riprap.lowlevel import keep_freed_memory

    options = riprap.PipelineOptions()
    if options.malloc_trim_threshold is not None:
        keep_freed_memory(options.malloc_trim_threshold)
    if options.gc_threshold is not None:
        gc.set_threshold(options.gc_threshold, *gc.get_threshold()[1:])


def expected_count(n: int) -> int:
    """Records of ``make_records(n)`` that have an email (every id not divisible by 100)."""
    return n - (n + 99) // 100


def child_main(
    doc: str | None,
    impls: Mapping[str, Impl],
    argv: list[str] | None,
    *,
    default_records: int | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse the shared command line, run the chosen implementations, print results.

    ``default_records=None`` lets the workload size itself (``--records`` then
    overrides). Without ``--impl`` every implementation runs once, one after another, in
    this process (their peak RSS is then cumulative: use the suite for RSS).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--impl", choices=sorted(impls), help="one implementation (default: all)")
    parser.add_argument("--records", type=int, default=default_records)
    parser.add_argument("--json", action="store_true", help="print one JSON line per run")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.records is not None:
        args.records = max(1, min(args.records, 20_000_000))  # bounded: a benchmark must finish
    for name in [args.impl] if args.impl else list(impls):
        result = _run_one(name, impls[name], args)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(_describe(result), flush=True)


def _run_one(name: str, impl: Impl, args: argparse.Namespace) -> Result:
    try:
        result = impl(args)
    except Skipped as skip:
        return {"impl": name, "skipped": skip.reason}
    seconds = result["seconds"]
    records = result.pop("records", args.records)
    peak = result.pop("peak_rss_mib", None)  # a workload may read it before its own reporting
    return {
        "impl": name,
        "records": records,
        "records_per_s": records / seconds if seconds > 0 else 0.0,
        **result,
        "peak_rss_mib": round(peak_rss_mib() if peak is None else peak, 1),
    }


def _describe(result: Result) -> str:
    if "skipped" in result:
        return f"{result['impl']:<16} skipped: {result['skipped']}"
    extra = "".join(
        f"  {key}={value}"
        for key, value in result.items()
        if key not in ("impl", "records", "records_per_s", "seconds", "peak_rss_mib")
    )
    return (
        f"{result['impl']:<16}{result['records_per_s']:>12,.0f} records/s"
        f"{result['peak_rss_mib']:>9.1f} MiB peak{extra}"
    )
