"""W1: in-memory JSON throughput, riprap against a plain Python loop in the same run.

Workload: parse each record with orjson, drop records whose email is null, add
``amount_cents``, serialise, count. The plain loop (a function with locals) is
the honest single-core limit; riprap's sync map/filter chain runs fused, so the
ratio shows what the engine costs on top of the user's own work.

Run: ``python -m benchmarks.bench_memory [--records N] [--repeat K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import random
import statistics
import time
from typing import TYPE_CHECKING, Any

import orjson

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource

if TYPE_CHECKING:
    from collections.abc import Callable


def make_records(n: int, *, seed: int = 7) -> list[bytes]:
    """``n`` JSON records ``{id, user, amount, email}``; email is null for 1%.

    Each is copied to a right-sized ``bytes``: an ``orjson.dumps`` result keeps
    its 4 KiB working buffer, so a million of them would hold 4 GiB and turn the
    benchmark into a memory-bandwidth test.
    """
    rng = random.Random(seed)
    return [
        bytes(
            memoryview(
                orjson.dumps(
                    {
                        "id": i,
                        "user": f"user-{rng.randrange(10_000)}",
                        "amount": round(rng.random() * 500, 2),
                        "email": None if i % 100 == 0 else f"user{i}@example.com",
                    }
                )
            )
        )
        for i in range(n)
    ]


def has_email(order: dict[str, Any]) -> bool:
    """Keep orders that have an email."""
    return order["email"] is not None


def add_cents(order: dict[str, Any]) -> dict[str, Any]:
    """Add the amount in cents."""
    order["amount_cents"] = round(order["amount"] * 100)
    return order


def plain_loop(records: list[bytes]) -> int:
    """The same work as one function with locals: the per-core limit."""
    loads = orjson.loads
    dumps = orjson.dumps
    count = 0
    for raw in records:
        order = loads(raw)
        if order["email"] is None:
            continue
        order["amount_cents"] = round(order["amount"] * 100)
        dumps(order)
        count += 1
    return count


class CountSink:
    """Counts what reaches it; writes nothing."""

    name = "count"
    idempotent = True

    def __init__(self) -> None:
        self.count = 0

    async def open(self) -> None:
        self.count = 0

    async def write(self, batch: riprap.Batch) -> None:
        self.count += len(batch.items)

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def riprap_pipeline(records: list[bytes], sink: CountSink) -> riprap.Pipeline:
    """The workload as a riprap pipeline at the defaults, checkpoints in memory."""
    return (
        riprap.Pipeline("bench-memory", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("records", records))
        .map("parse", orjson.loads)
        .filter("has_email", has_email)
        .map("add_cents", add_cents)
        .map("serialize", orjson.dumps)
        .sink(sink)
    )


def run_riprap(records: list[bytes]) -> int:
    """Run the pipeline once with ``riprap.run``; return the records counted by the sink."""
    sink = CountSink()
    riprap.run(riprap_pipeline(records, sink), handle_signals=False)
    return sink.count


def run_riprap_embedded(records: list[bytes]) -> int:
    """Run the pipeline once as a service embeds it: ``asyncio.run(pipeline.run())``."""
    sink = CountSink()
    asyncio.run(riprap_pipeline(records, sink).run())
    return sink.count


def run_riprap_embedded_uvloop(records: list[bytes]) -> int:
    """Embedded on uvloop: ``uvloop.run(pipeline.run())``."""
    import uvloop

    sink = CountSink()
    uvloop.run(riprap_pipeline(records, sink).run())
    return sink.count


def plain_loop_calls(records: list[bytes]) -> int:
    """The plain loop calling the same step functions riprap calls (no engine)."""
    loads = orjson.loads
    dumps = orjson.dumps
    count = 0
    for raw in records:
        order = loads(raw)
        if not has_email(order):
            continue
        dumps(add_cents(order))
        count += 1
    return count


BATCH = 1_000
"""Records per slice of :func:`batched_loop`: riprap's default ``batch_size``."""


def batched_loop(records: list[bytes]) -> int:
    """The loop calling the same functions a slice of :data:`BATCH` at a time, each slice's
    results kept together until it is done: the least any engine that hands batches on does.
    """
    loads = orjson.loads
    dumps = orjson.dumps
    count = 0
    for start in range(0, len(records), BATCH):
        results = []
        for raw in records[start : start + BATCH]:
            order = loads(raw)
            if not has_email(order):
                continue
            results.append(dumps(add_cents(order)))
        count += len(results)
    return count


def handed_over_loop(records: list[bytes]) -> int:
    """:func:`batched_loop` in two asyncio tasks, each slice's results handed from the one
    that makes them to the one that takes them through a bounded queue: the least an
    asyncio engine with a source task and a sink task does (no checkpoint, no policy,
    no metrics). The maker gives the loop a turn after each slice, as riprap's
    in-memory source does, so each slice is taken while it is still in the caches.
    """
    loads = orjson.loads
    dumps = orjson.dumps

    async def main() -> int:
        queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue(8)
        count = 0

        async def take() -> None:
            nonlocal count
            while (results := await queue.get()) is not None:
                count += len(results)

        async def make() -> None:
            for start in range(0, len(records), BATCH):
                results = []
                for raw in records[start : start + BATCH]:
                    order = loads(raw)
                    if not has_email(order):
                        continue
                    results.append(dumps(add_cents(order)))
                await queue.put(results)
                del results
                await asyncio.sleep(0)
            await queue.put(None)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(take())
            tasks.create_task(make())
        return count

    return asyncio.run(main())


def timed(fn: Callable[[list[bytes]], int], records: list[bytes]) -> tuple[float, int]:
    """Seconds taken and the count returned."""
    gc.collect()
    started = time.perf_counter()
    count = fn(records)
    return time.perf_counter() - started, count


IMPLEMENTATIONS: dict[str, Callable[[list[bytes]], int]] = {
    "plain loop": plain_loop,
    "plain loop, same fns": plain_loop_calls,
    "plain loop, batches held": batched_loop,
    "batches handed over": handed_over_loop,
    "riprap": run_riprap,
    "riprap embedded": run_riprap_embedded,
}
if importlib.util.find_spec("uvloop") is not None:
    IMPLEMENTATIONS["riprap embedded uvloop"] = run_riprap_embedded_uvloop


def measure(n: int, repeat: int) -> dict[str, tuple[float, float]]:
    """Median rate and median ratio to the plain loop of each implementation.

    Every round runs each implementation once, back to back, and ratios are
    taken within a round, so a machine that slows down mid-run hits both sides
    of a ratio alike.
    """
    records = make_records(n)
    expected = plain_loop(records)
    run_riprap(records[:1_000])  # warm-up: lazy imports, loop policy
    seconds: dict[str, list[float]] = {label: [] for label in IMPLEMENTATIONS}
    for _ in range(repeat):
        for label, fn in IMPLEMENTATIONS.items():
            took, count = timed(fn, records)
            if count != expected:
                raise SystemExit(f"{label} counted {count}, expected {expected}")
            seconds[label].append(took)
    base = seconds["plain loop"]
    return {
        label: (
            n / statistics.median(times),
            statistics.median(b / t for b, t in zip(base, times, strict=True)),
        )
        for label, times in seconds.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    results = measure(args.records, args.repeat)
    print(f"W1 in-memory, {args.records:,} records, median of {args.repeat} rounds")
    print(f"{'implementation':<26}{'records/s':>12}{'vs plain loop':>15}")
    for label, (rate, ratio) in results.items():
        print(f"{label:<26}{rate:>12,.0f}{ratio:>15.1%}")


if __name__ == "__main__":
    main()
