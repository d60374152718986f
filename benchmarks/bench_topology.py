"""T1: what fan-out and routing cost over a single sink, on W1's in-memory work.

Three pipelines, embedded at the defaults, on the same records: W1 ending in
one counting sink; W1 fanned out to two counting sinks (every record to
both); W1 routed to two counting sinks by the parity of the record's id
(every record to one). Every round runs each once, in a rotating order, and
ratios are taken within a round against the single sink's run, so a machine
that slows down mid-run hits both sides alike. Ratios are given on the wall
clock and on the process's CPU clock (the steadier one on a shared machine).

Run: ``python -m benchmarks.bench_topology [--records N] [--repeat K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import TYPE_CHECKING, Any

import orjson

import riprap
from benchmarks.bench_memory import CountSink, add_cents, has_email, make_records
from riprap.connectors.memory import IterableSource

if TYPE_CHECKING:
    from collections.abc import Callable


class NamedCount(CountSink):
    """A counting sink under a name of its own (two sinks need two names)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def _w1(records: list[bytes]) -> riprap.Pipeline:
    return (
        riprap.Pipeline("bench-topology", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("records", records))
        .map("parse", orjson.loads)
        .filter("has_email", has_email)
        .map("add_cents", add_cents)
        .map("serialize", orjson.dumps)
    )


def single(records: list[bytes]) -> int:
    """W1 ending in one counting sink."""
    sink = NamedCount("count")
    asyncio.run(_w1(records).sink(sink).run())
    return sink.count


def fan_out(records: list[bytes]) -> int:
    """W1 fanned out to two counting sinks: each record to both (counted once)."""
    a, b = NamedCount("a"), NamedCount("b")
    asyncio.run(_w1(records).fan_out(a=riprap.Branch().sink(a), b=riprap.Branch().sink(b)).run())
    if a.count != b.count:
        raise SystemExit(f"fan-out sinks differ: {a.count} and {b.count}")
    return a.count


def _parity(value: Any) -> str:
    return "even" if value[-2] % 2 == 0 else "odd"  # the last digit of the id field's line


def route(records: list[bytes]) -> int:
    """W1 routed to two counting sinks by a cheap function of the value: each record to one."""
    even, odd = NamedCount("even"), NamedCount("odd")
    pipeline = _w1(records).route(
        "by_parity", _parity, even=riprap.Branch().sink(even), odd=riprap.Branch().sink(odd)
    )
    asyncio.run(pipeline.run())
    return even.count + odd.count


IMPLEMENTATIONS: dict[str, Callable[[list[bytes]], int]] = {
    "single sink": single,
    "fan-out to 2": fan_out,
    "route to 2": route,
}


Figures = tuple[float, float, float, float, float]
"""Median records/s; median, lowest and highest wall-clock ratio to one sink; median CPU ratio."""


def measure(n: int, repeat: int) -> dict[str, Figures]:
    """Each implementation's :data:`Figures`."""
    records = make_records(n)
    expected = single(records)
    for fn in IMPLEMENTATIONS.values():
        fn(records[:1_000])  # warm-up: lazy imports, the loop policy
    labels = list(IMPLEMENTATIONS)
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    for round_ in range(repeat):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            gc.collect()
            started, cpu_started = time.perf_counter(), time.process_time()
            count = IMPLEMENTATIONS[label](records)
            seconds[label].append(time.perf_counter() - started)
            cpu[label].append(time.process_time() - cpu_started)
            if count != expected:
                raise SystemExit(f"{label} counted {count}, expected {expected}")
    out = {}
    for label, times in seconds.items():
        ratios = _ratios(seconds["single sink"], times)
        on_cpu = statistics.median(_ratios(cpu["single sink"], cpu[label]))
        rate = n / statistics.median(times)
        out[label] = (rate, statistics.median(ratios), min(ratios), max(ratios), on_cpu)
    return out


def _ratios(base: list[float], times: list[float]) -> list[float]:
    return [b / t for b, t in zip(base, times, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    results = measure(args.records, args.repeat)
    print(f"T1 topology on W1, {args.records:,} records, median of {args.repeat} rounds")
    print(f"{'pipeline':<16}{'records/s':>12}{'vs one sink':>14}  {'spread':<10}{'on CPU':>8}")
    for label, (rate, ratio, low, high, on_cpu) in results.items():
        spread = f"{low:.0%}-{high:.0%}"
        print(f"{label:<16}{rate:>12,.0f}{ratio:>14.0%}  {spread:<10}{on_cpu:>8.0%}")


if __name__ == "__main__":
    main()
