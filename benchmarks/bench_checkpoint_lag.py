"""Event-loop lag at checkpoints: W1 through a dedupe that remembers a million keys.

Workload: W1 (parse, drop null emails, add ``amount_cents``, serialise) with a
:class:`~riprap.stages.dedupe.Dedupe` on ``id`` after the parse, its state
filled beforehand with ``--keys`` keys (each new id evicts the oldest, so the
state stays that large), checkpoints every ``--interval`` seconds to SQLite. A
probe task in the same event loop sleeps 1 ms over and over and records how
late it wakes: that lateness is the time the loop was held. Probe samples that
overlap a checkpoint save are "during checkpoints"; the rest are the baseline.
Percentiles weigh each sample by its length (a loop held for a second is one
sample, but a second of waiting for whatever arrives in it).

Run: ``python -m benchmarks.bench_checkpoint_lag [--records N] [--keys K] [--interval S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

import riprap
import riprap.checkpoints
from benchmarks.bench_memory import CountSink, add_cents, has_email, make_records
from riprap.connectors.memory import IterableSource
from riprap.stages.dedupe import Dedupe

if TYPE_CHECKING:
    from riprap.checkpoints import Checkpoint, CheckpointBackend, Claim

PROBE_SLEEP = 0.001
"""Seconds the probe sleeps between two measurements."""


class TimedBackend:
    """A backend that records when each save ran (the probe's samples are matched to them)."""

    def __init__(self, inner: CheckpointBackend) -> None:
        self.inner = inner
        self.saves: list[tuple[float, float]] = []

    async def claim(self, pipeline: str, owner: str) -> Claim:
        return await self.inner.claim(pipeline, owner)

    async def save(self, checkpoint: Checkpoint) -> None:
        started = time.perf_counter()
        try:
            await self.inner.save(checkpoint)
        finally:
            self.saves.append((started, time.perf_counter()))

    async def load(self, pipeline: str) -> Checkpoint | None:
        return await self.inner.load(pipeline)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def probe(samples: list[tuple[float, float, float]]) -> None:
    """Record ``(start, end, lag)`` of each 1 ms sleep until cancelled."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(PROBE_SLEEP)
        ended = time.perf_counter()
        samples.append((started, ended, max(ended - started - PROBE_SLEEP, 0.0)))


def filled_dedupe(keys: int) -> Dedupe:
    """A dedupe on ``id`` that already remembers ``keys`` keys (none of them a record's id)."""
    stage = Dedupe("dedupe", key="id", max_keys=keys)
    start = time.time() - keys * 1e-6
    # Format version 1 (pairs): every riprap version restores it.
    state = {
        "version": 1,
        "keys": [[f"old-{i}", start + i * 1e-6] for i in range(keys)],
        "watermark": None,
    }
    stage.restore(state)
    return stage


async def run_once(
    records: list[bytes], keys: int, interval: float, where: Path
) -> dict[str, float]:
    """One run; lag percentiles during checkpoints and outside them, throughput."""
    sink = CountSink()
    backend = TimedBackend(riprap.checkpoints.SqliteCheckpoints(where / "checkpoints.db"))
    pipeline = (
        riprap.Pipeline("bench-checkpoint-lag", checkpoint=backend, checkpoint_interval=interval)
        .source(IterableSource("records", records))
        .map("parse", orjson.loads)
        .stage(filled_dedupe(keys))
        .filter("has_email", has_email)
        .map("add_cents", add_cents)
        .map("serialize", orjson.dumps)
        .sink(sink)
    )
    samples: list[tuple[float, float, float]] = []
    started = time.perf_counter()
    prober = asyncio.ensure_future(probe(samples))
    try:
        await pipeline.run()
    finally:
        prober.cancel()
    seconds = time.perf_counter() - started
    during = [(e - s, lag) for s, e, lag in samples if _overlaps(s, e, backend.saves)]
    outside = [(e - s, lag) for s, e, lag in samples if not _overlaps(s, e, backend.saves)]
    return {
        "records_per_s": sink.count / seconds,
        "saves": len(backend.saves),
        "save_s_median": statistics.median(b - a for a, b in backend.saves),
        "lag_p99_during_ms": 1000 * _p99(during),
        "lag_max_during_ms": 1000 * max((lag for _, lag in during), default=0.0),
        "lag_p99_outside_ms": 1000 * _p99(outside),
    }


def _overlaps(start: float, end: float, saves: list[tuple[float, float]]) -> bool:
    """Whether a probe sample overlaps a save (the cut runs just before the save starts)."""
    return any(start < b and end > a for a, b in saves)


def _p99(samples: list[tuple[float, float]]) -> float:
    """The lag that 99% of the time is spent under, samples weighted by how long they lasted.

    A loop held for one second yields one sample; weighted by time, it counts
    as what a health check or a timer arriving in that second would see.
    """
    total = sum(span for span, _ in samples)
    waited = 0.0
    for span, lag in sorted(samples, key=lambda sample: sample[1]):
        waited += span
        if waited >= 0.99 * total:
            return lag
    return 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    records = make_records(args.records)
    with tempfile.TemporaryDirectory() as where:
        result = asyncio.run(run_once(records, args.keys, args.interval, Path(where)))
    print(
        f"W1 + dedupe of {args.keys:,} keys, {args.records:,} records,"
        f" checkpoint_interval {args.interval:g} s (SQLite)"
    )
    for name, value in result.items():
        print(f"{name:<22}{value:>14,.1f}")


if __name__ == "__main__":
    main()
