"""W4: latency of W1's transform at a fixed input rate, and whether memory stays flat.

A :class:`RateSource` (riprap's ``Source`` protocol) emits W1's records at a
fixed rate, 20,000 records/s for 30 s by default, in small batches as they fall
due: ``read()`` waits until the next records are due (every ``--tick``, 1 ms),
then hands over every record due by now and stamps them with
``time.perf_counter()``. The sink takes the time again when it is handed each
batch, so a record's latency is emit-to-sink-write, queueing included.

* **plain loop** (the limit): an async loop reading the same source and doing
  the W1 transform inline, so its latency is the source's batching alone.
* **riprap**: the W1 pipeline (fused sync steps, checkpoints and acks on) with
  the latency sink.

Every latency is kept (two preallocated arrays of 8 bytes a record, so the
bookkeeping does not grow during the run). RSS is read at the start, every
250 ms and at the end; the peak is the run's high-water mark.

Run: ``python -m benchmarks.w4_latency [--impl NAME] [--rate R] [--seconds S] [--json]``.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from array import array
from typing import TYPE_CHECKING

import anyio
import orjson

import riprap
import riprap.checkpoints
from benchmarks._child import (
    Result,
    child_main,
    expected_count,
    make_input,
    peak_rss_mib,
    rss_mib,
    start_measuring,
)
from benchmarks.bench_memory import add_cents, has_email

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

USE_UVLOOP = importlib.util.find_spec("uvloop") is not None
POOL = 20_000
"""Distinct records; the source cycles through them (a multiple of 100 keeps 1% null emails)."""
WARM_UP = 1_000
SAMPLE_EVERY = 0.25
"""Seconds between RSS samples."""


class RateSource:
    """Emits records at ``rate`` per second in small batches; ``None`` after ``total``.

    Record ``i`` falls due at ``start + i / rate``. ``read`` sleeps until the
    next record is due (and at least ``tick`` after its last return), then
    returns every record due by now, up to ``max_records``, stamping each with
    the emit time in ``stamps[i]``.
    """

    name = "rate"

    def __init__(
        self, pool: list[bytes], *, rate: float, total: int, tick: float, stamps: array[float]
    ) -> None:
        self.pool = pool
        self.rate = rate
        self.total = total
        self.tick = tick
        self.stamps = stamps
        self.emitted = 0
        self.most_behind = 0.0
        self.first_emit = 0.0
        self._start = 0.0
        self._last = 0.0

    async def open(self, context: riprap.SourceContext | None = None) -> None:
        self.emitted = 0

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        emitted = self.emitted
        if emitted >= self.total:
            return None
        if emitted == 0:
            self._start = self._last = self.first_emit = time.perf_counter()
        wake = max(self._start + emitted / self.rate, self._last + self.tick)
        delay = wake - time.perf_counter()
        if delay > 0:
            await anyio.sleep(delay)
        else:
            await anyio.lowlevel.checkpoint()
        now = self._last = time.perf_counter()
        due = int((now - self._start) * self.rate) + 1
        end = min(self.total, emitted + max_records, max(due, emitted + 1))
        self.most_behind = max(self.most_behind, now - (self._start + emitted / self.rate))
        pool, size = self.pool, len(self.pool)
        values = [pool[i % size] for i in range(emitted, end)]
        self.stamps[emitted:end] = array("d", [now]) * (end - emitted)
        self.emitted = end
        return riprap.SourceBatch("p0", values, start=emitted)

    async def aclose(self) -> None:
        return None


class LatencySink:
    """Notes, for every record written, the seconds since its source emitted it."""

    name = "latency"
    idempotent = True

    def __init__(self, stamps: array[float], capacity: int) -> None:
        self.stamps = stamps
        self.latencies = array("d", bytes(8 * capacity))
        self.count = 0
        self.last_write = 0.0

    def note(self, latency: float, n: int) -> None:
        """Record ``n`` records that took ``latency`` seconds."""
        self.latencies[self.count : self.count + n] = array("d", [latency]) * n
        self.count += n

    async def open(self) -> None:
        self.count = 0

    async def write(self, batch: riprap.Batch) -> None:
        now = self.last_write = time.perf_counter()
        n = len(batch.items)
        first, last = batch.locate(0), batch.locate(n - 1)
        if first is not None and last is not None and first[0] is last[0]:
            self.note(now - self.stamps[first[0].start], n)  # one source batch, one stamp
            return
        for i in range(n):
            where = batch.locate(i)
            assert where is not None
            self.note(now - self.stamps[where[0].offset_of(where[1])], 1)

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def percentiles(self) -> dict[str, float]:
        """p50, p99 and p99.9 in milliseconds."""
        ordered = sorted(self.latencies[: self.count])
        if not ordered:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0}

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        return {"p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999)}


async def plain_loop(source: RateSource, sink: LatencySink) -> None:
    """The limit: read the source and do the W1 transform inline, no engine."""
    loads, dumps = orjson.loads, orjson.dumps
    await source.open()
    while (batch := await source.read(1_000)) is not None:
        written = 0
        for raw in batch.values:
            order = loads(raw)
            if order["email"] is None:
                continue
            order["amount_cents"] = round(order["amount"] * 100)
            dumps(order)
            written += 1
        now = sink.last_write = time.perf_counter()
        sink.note(now - source.stamps[batch.start], written)


async def run_riprap(source: RateSource, sink: LatencySink) -> None:
    """W1's pipeline fed by the rate-limited source."""
    pipeline = (
        riprap.Pipeline("bench-latency", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(source)
        .map("parse", orjson.loads)
        .filter("has_email", has_email)
        .map("add_cents", add_cents)
        .map("serialize", orjson.dumps)
        .sink(sink)
    )
    await pipeline.run()


RUNS: dict[str, Callable[[RateSource, LatencySink], Awaitable[None]]] = {
    "plain loop": plain_loop,
    "riprap": run_riprap,
}


def measure(name: str, args: argparse.Namespace) -> Result:
    """One run at ``args.rate`` records/s for ``args.seconds`` s, after a short warm-up."""
    total = args.records or max(1, round(args.rate * args.seconds))
    pool = make_input(min(POOL, total))
    run = RUNS[name]

    async def timed() -> Result:
        warm = array("d", bytes(8 * WARM_UP))
        await run(  # fast: imports, caches and the loop, not a measurement
            RateSource(pool, rate=WARM_UP * 20, total=WARM_UP, tick=args.tick, stamps=warm),
            LatencySink(warm, WARM_UP),
        )
        stamps = array("d", bytes(8 * total))
        sink = LatencySink(stamps, total)
        source = RateSource(pool, rate=args.rate, total=total, tick=args.tick, stamps=stamps)
        rss_start = start_measuring()
        samples: list[float] = []
        with anyio.fail_after(args.seconds * 3 + 60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_sample_rss, samples)
                await run(source, sink)
                tg.cancel_scope.cancel()
        rss_end, peak = rss_mib(), peak_rss_mib()  # before sorting a copy of the latencies
        return {
            "seconds": sink.last_write - source.first_emit,
            "records": total,
            "count": sink.count,
            "rate": args.rate,
            **sink.percentiles(),
            "source_behind_ms": round(source.most_behind * 1000, 3),
            "rss_start_mib": round(rss_start, 1),
            "rss_end_mib": round(rss_end, 1),
            "rss_max_sample_mib": round(max(samples, default=rss_start), 1),
            "peak_rss_mib": round(peak, 1),
        }

    result = anyio.run(timed, backend="asyncio", backend_options={"use_uvloop": USE_UVLOOP})
    if result["count"] != expected_count(total):
        raise SystemExit(f"counted {result['count']}, expected {expected_count(total)}")
    return result


async def _sample_rss(samples: list[float]) -> None:
    while True:
        samples.append(rss_mib())
        await anyio.sleep(SAMPLE_EVERY)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=20_000, help="records per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the source emits")
    # --records, when given, replaces rate x seconds as the number of records
    parser.add_argument("--tick", type=float, default=0.001, help="seconds between source batches")


IMPLEMENTATIONS = {name: functools.partial(measure, name) for name in RUNS}


def main(argv: list[str] | None = None) -> None:
    child_main(__doc__, IMPLEMENTATIONS, argv, default_records=None, add_arguments=_arguments)


if __name__ == "__main__":
    main()
