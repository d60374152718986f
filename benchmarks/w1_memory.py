"""W1 for the suite: one implementation of the in-memory workload per process.

The workload is :mod:`benchmarks.bench_memory`'s (parse with orjson, drop null
emails, add ``amount_cents``, serialise, count) on the same records; the plain
loop is the limit. riprap runs at its defaults three ways: through
``riprap.run`` (scripts and the CLI), embedded in a service with
``asyncio.run(pipeline.run())``, and embedded on uvloop. ``bench_memory``
itself interleaves implementations in one process for the steadiest ratio;
this module runs one of them alone so that its peak RSS is its own.

Run: ``python -m benchmarks.w1_memory [--impl NAME] [--records N] [--json]``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks import peers
from benchmarks._child import Result, child_main, expected_count, make_input, start_measuring
from benchmarks.bench_memory import (
    plain_loop,
    run_riprap,
    run_riprap_embedded,
    run_riprap_embedded_uvloop,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

WARM_UP = 1_000
"""Records run once before the measured run (lazy imports, caches, the event loop policy)."""

RUNS: dict[str, Callable[[list[bytes]], int]] = {
    "plain loop": plain_loop,
    "riprap": run_riprap,
    "riprap embedded": run_riprap_embedded,
    "riprap embedded uvloop": run_riprap_embedded_uvloop,
    "bytewax": peers.run_bytewax,
    "quixstreams": peers.run_quixstreams,
    "faust": peers.run_faust,
}
PACKAGES = {"riprap": "riprap", "bytewax": "bytewax", "quixstreams": "quixstreams"}


def measure(run: Callable[[list[bytes]], int], args: argparse.Namespace) -> Result:
    """One measured run of ``run`` on ``args.records`` records, after a warm-up."""
    records = make_input(args.records)
    run(records[:WARM_UP])
    rss_start = start_measuring()
    started = time.perf_counter()
    count = run(records)
    seconds = time.perf_counter() - started
    if count != expected_count(args.records):
        raise SystemExit(f"counted {count}, expected {expected_count(args.records)}")
    return {"seconds": seconds, "count": count, "rss_start_mib": round(rss_start, 1)}


def _impl(name: str) -> Callable[[argparse.Namespace], Result]:
    def impl(args: argparse.Namespace) -> Result:
        result = measure(RUNS[name], args)
        if name in PACKAGES:
            result["version"] = peers.peer_version(PACKAGES[name])
        return result

    return impl


IMPLEMENTATIONS = {name: _impl(name) for name in RUNS}


def main(argv: list[str] | None = None) -> None:
    child_main(__doc__, IMPLEMENTATIONS, argv, default_records=1_000_000)


if __name__ == "__main__":
    main()
