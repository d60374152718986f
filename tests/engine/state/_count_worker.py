"""Subprocess for the kill -9 tests of keyed state: a keyed running count, slowly.

Usage: ``python _count_worker.py STORE MICROSECONDS [dedupe|Dedupe]``, run in
the test's directory; ``STORE`` is ``memory`` or ``sqlite``. With ``dedupe`` it
keeps the first record of each id (ids ``number // 3``) through a keyed-state
filter instead, with ``Dedupe`` through the built-in stage on keyed state, so
a lost state change shows as a row too many. The pipeline counts records
per key and upserts each record's count into ``out.db`` by record number, so a
record replayed after a crash rewrites its row: the table ends equal to a
crash-free run's only if every count is right. ``MICROSECONDS`` of sleep per
record make a kill from outside land mid-run. A run that ends on its own exits 0.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import riprap
from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.memory import IterableSource
from riprap.connectors.sqlite import SqliteSink
from riprap.stages.dedupe import Dedupe
from riprap.state import MemoryStore, SqliteStore, State

PIPELINE = "running-count"
RECORDS = 3_000
KEYS = 23
TABLE = "counts"


def key_of(number: int) -> str:
    """An uneven spread of records over keys."""
    return f"customer-{number * number % KEYS}"


def expected() -> dict[int, int]:
    """Each record's running count, as a run that never stops computes it."""
    seen: dict[str, int] = {}
    counts = {}
    for number in range(RECORDS):
        key = key_of(number)
        seen[key] = seen.get(key, 0) + 1
        counts[number] = seen[key]
    return counts


def build(store: str, work: float) -> riprap.Pipeline:
    """The running count, with small batches and frequent checkpoints."""

    def count(number: int, state: State) -> dict[str, Any]:
        n: int = state.get(0) + 1
        state.set(n)
        time.sleep(work)  # stands in for work in the step
        return {"number": number, "n": n}

    kept = MemoryStore() if store == "memory" else SqliteStore("state")
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=SqliteCheckpoints("checkpoints.db"),
            batch_size=20,
            max_in_flight=100,
            checkpoint_interval=0.05,
        )
        .source(IterableSource("numbers", list(range(RECORDS)), keys=key_of))
        .map("count", count, state=kept)
        .sink(SqliteSink("out.db", table=TABLE, key="number", columns=("n",)))
    )


def first_of_each_id(store: str, work: float, *, stage: bool = False) -> riprap.Pipeline:
    """A keyed dedupe: only the first record of each id goes on (``stage``: a ``Dedupe``)."""

    def first(number: int, state: State) -> bool:
        time.sleep(work)
        if state.get(False):
            return False
        state.set(True)
        return True

    def slow(number: int) -> int:
        time.sleep(work)
        return number

    kept = MemoryStore() if store == "memory" else SqliteStore("state")
    pipeline = riprap.Pipeline(
        PIPELINE,
        checkpoint=SqliteCheckpoints("checkpoints.db"),
        batch_size=20,
        max_in_flight=100,
        checkpoint_interval=0.05,
    ).source(IterableSource("numbers", list(range(RECORDS)), keys=lambda n: f"id-{n // 3}"))
    if stage:
        dedupe = Dedupe("first", key=lambda number: number // 3, ttl=3600, store=kept)
        pipeline = pipeline.map("work", slow).stage(dedupe)
    else:
        pipeline = pipeline.filter("first", first, state=kept)
    return pipeline.map("row", lambda number: {"number": number, "n": 1}).sink(
        SqliteSink("out.db", table=TABLE, key="number", columns=("n",))
    )


def main(argv: list[str]) -> int:
    """Run to completion; exit 0 when the input is done."""
    store, work = argv[0], int(argv[1]) / 1_000_000
    mode = argv[2:]
    if mode == ["dedupe"]:
        pipeline = first_of_each_id(store, work)
    elif mode == ["Dedupe"]:
        pipeline = first_of_each_id(store, work, stage=True)
    else:
        pipeline = build(store, work)
    report = riprap.run(pipeline)
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
