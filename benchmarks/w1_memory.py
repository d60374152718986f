"""W1 for the suite: one implementation of the in-memory workload per process.

The workload is :mod:`benchmarks.bench_memory`'s (parse with orjson, drop null
emails, add ``amount_cents``, serialise, count) on the same records; the plain
loop is the limit. Three references show what the limit asks of an engine: the
loop calling the step functions riprap calls (``same fns``); that loop over
slices of 1,000 keeping each slice's results together (``batches held``, with
the process settings a riprap run applies), the least an engine that hands
batches on does; and those slices handed from one asyncio task to another
through a bounded queue (``batches handed over``), the least an asyncio engine
with a source task and a sink task does. riprap runs at its defaults three
ways: through ``riprap.run`` (scripts and the CLI), embedded in a service with
``asyncio.run(pipeline.run())``, and embedded on uvloop. ``bench_memory``
itself interleaves implementations in one process for the steadiest ratio;
this module runs one of them alone so that its peak RSS is its own.

Run: ``python -m benchmarks.w1_memory [--impl NAME] [--records N] [--json]``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks import peers
from benchmarks._child import (
    Result,
    as_a_riprap_run_sets,
    child_main,
    expected_count,
    make_input,
    start_measuring,
)
from benchmarks.bench_memory import (
    batched_loop,
    handed_over_loop,
    plain_loop,
    plain_loop_calls,
    run_riprap,
    run_riprap_embedded,
    run_riprap_embedded_uvloop,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

WARM_UP = 1_000
"""Records run once before the measured run (lazy imports, caches, the event loop policy)."""


def batched_loop_as_riprap_runs(records: list[bytes]) -> int:
    """:func:`batched_loop` in a process with the settings every riprap run applies (the
    heap it frees a batch at a time kept for the next), as riprap's runs have them."""
    as_a_riprap_run_sets()
    return batched_loop(records)


def handed_over_as_riprap_runs(records: list[bytes]) -> int:
    """:func:`handed_over_loop` with the process settings of a riprap run."""
    as_a_riprap_run_sets()
    return handed_over_loop(records)


RUNS: dict[str, Callable[[list[bytes]], int]] = {
    "plain loop": plain_loop,
    "plain loop, same fns": plain_loop_calls,
    "plain loop, batches held": batched_loop_as_riprap_runs,
    "batches handed over": handed_over_as_riprap_runs,
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
