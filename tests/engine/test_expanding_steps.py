"""A flat_map that multiplies its records: what a batch holds does not grow with the expansion.

A fused chain hands its outputs on ``batch_size`` at a time, also in the
middle of one record's, each part sent before the next is made; an async
flat_map takes a batch in parts of a few records. Positions still move only
once every part is done.
"""

from __future__ import annotations

import tracemalloc
from typing import TYPE_CHECKING

import anyio.lowlevel
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.memory import IterableSource

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

EXPANSION = 1_000


class BatchSink:
    """Keeps every value and the size of every write; fails write number ``fail_at``."""

    name = "batches"
    idempotent = False

    def __init__(self, *, keep: bool = True, fail_at: int | None = None) -> None:
        self.keep = keep
        self.fail_at = fail_at
        self.sizes: list[int] = []
        self.values: list[int] = []

    async def open(self) -> None:
        return None

    async def write(self, batch: riprap.Batch) -> None:
        if self.fail_at is not None and len(self.sizes) + 1 == self.fail_at:
            raise RuntimeError("the sink is down")
        self.sizes.append(len(batch.items))
        if self.keep:
            self.values.extend(batch.items)

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def explode(n: int) -> range:
    """``EXPANSION`` distinct values for record ``n``, in order."""
    return range(n * EXPANSION, (n + 1) * EXPANSION)


def failing_at(bad: int | None) -> Callable[[int], range]:
    """:func:`explode`, raising a data error for record ``bad``."""

    def explode_but(n: int) -> range:
        if n == bad:
            raise riprap.DataError(f"record {n}", reason="validation")
        return explode(n)

    return explode_but


def with_explode(pipeline: riprap.Pipeline, kind: str, bad: int | None = None) -> riprap.Pipeline:
    """``pipeline`` with the explode step, sync (fused) or async (two calls at a time)."""
    fn = failing_at(bad)
    if kind == "sync":
        return pipeline.flat_map("explode", fn)

    async def explode_later(n: int) -> range:
        await anyio.lowlevel.checkpoint()
        return fn(n)

    return pipeline.flat_map("explode", explode_later, concurrency=2)


def expanding(
    records: int,
    kind: str,
    *,
    batch_size: int = 100,
    checkpoint: riprap.checkpoints.MemoryCheckpoints | None = None,
    dead_letter: riprap.deadletters.JsonLinesDeadLetters | None = None,
    bad: int | None = None,
) -> riprap.Pipeline:
    pipeline = riprap.Pipeline(
        "expand",
        checkpoint=checkpoint or riprap.checkpoints.MemoryCheckpoints(),
        dead_letter=dead_letter,
        batch_size=batch_size,
    ).source(IterableSource("nums", list(range(records))))
    return with_explode(pipeline, kind, bad)


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


async def traced_run(pipeline: riprap.Pipeline) -> tuple[riprap.RunReport, int]:
    """Run ``pipeline``; its report and the peak of the memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        report = await pipeline.run()
        return report, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@KINDS
async def test_outputs_go_on_in_parts_in_order(kind: str) -> None:
    """40 records of 1,000 outputs each in one batch: no write holds more than two records'."""
    sink = BatchSink()
    report = await expanding(40, kind).sink(sink).run()
    assert list(range(40 * EXPANSION)) == sink.values
    assert max(sink.sizes) <= (100 if kind == "sync" else 2 * EXPANSION)  # 40,000 before
    assert len(sink.sizes) >= 20
    assert {"memory": 40} == report.positions
    assert 40 * EXPANSION == report.records_out


async def test_parts_after_an_async_step() -> None:
    """A chain after an async step (run in that step's task) sends its outputs in parts too."""

    async def same(n: int) -> int:
        return n

    sink = BatchSink()
    pipeline = (
        riprap.Pipeline("expand", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=50)
        .source(IterableSource("nums", list(range(30))))
        .map("same", same, concurrency=4)
        .flat_map("explode", explode)
        .filter("even", lambda v: v % 2 == 0)
        .sink(sink)
    )
    report = await pipeline.run()
    assert list(range(0, 30 * EXPANSION, 2)) == sink.values
    assert max(sink.sizes) <= EXPANSION
    assert {"memory": 30} == report.positions


@KINDS
async def test_memory_does_not_grow_with_the_expansion(kind: str) -> None:
    """A million outputs from one batch of 1,000 records: a few parts are alive at a time."""
    sink = BatchSink(keep=False)
    pipeline = expanding(1_000, kind, batch_size=1_000).sink(sink)
    report, peak = await traced_run(pipeline)
    assert 1_000 * EXPANSION == sum(sink.sizes) == report.records_out
    # The whole batch's outputs (a million ints and their lists) are over 36 MiB.
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@KINDS
async def test_a_failure_in_a_later_part_names_its_record(kind: str, tmp_path: Path) -> None:
    """A record failing in a later part is dead-lettered as itself; the others all go out."""
    letters = riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl")
    sink = BatchSink()
    pipeline = expanding(50, kind, batch_size=50, dead_letter=letters, bad=37).sink(sink)
    report = await pipeline.run()
    assert [v for n in range(50) if n != 37 for v in explode(n)] == sink.values
    assert len(sink.sizes) > 3
    (letter,) = riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl")
    assert ("memory", 37, 37, "validation") == (
        letter.partition,
        letter.offset,
        letter.original_value(),
        letter.reason,
    )
    assert {"memory": 50} == report.positions


@KINDS
async def test_positions_wait_for_every_part(kind: str) -> None:
    """The sink fails at the third part: no position passes the batch; a rerun writes it all."""
    backend = riprap.checkpoints.MemoryCheckpoints()
    failing = BatchSink(fail_at=3)
    with pytest.raises(riprap.PipelineError, match="the sink is down"):
        await expanding(40, kind, checkpoint=backend).sink(failing).run()
    assert 2 == len(failing.sizes)  # two parts were written before the failure
    saved = await backend.load("expand")
    assert saved is None or dict(saved.positions).get("memory", 0) == 0

    sink = BatchSink()
    report = await expanding(40, kind, checkpoint=backend).sink(sink).run()
    assert list(range(40 * EXPANSION)) == sink.values
    assert {"memory": 40} == report.positions


async def test_one_record_expanded_lazily_goes_on_in_parts(tmp_path: Path) -> None:
    """One record naming a million lines, read by a generator: never held whole, in order.

    The generator fails after 600,000 lines: what it gave stays written, the
    record is dead-lettered once, and the next record goes on.
    """

    def lines(n: int) -> Iterator[int]:
        for k in range(1_000_000):
            if n == 1 and k == 600_000:
                raise riprap.DataError("cut short", reason="truncated")
            yield k

    letters = riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl")
    sink = BatchSink(keep=False)
    pipeline = (
        riprap.Pipeline(
            "lines", checkpoint=riprap.checkpoints.MemoryCheckpoints(), dead_letter=letters
        )
        .source(IterableSource("files", [0, 1, 2]))
        .flat_map("read", lines)
        .sink(sink)
    )
    report, peak = await traced_run(pipeline)
    assert 2_600_000 == sum(sink.sizes) == report.records_out
    assert max(sink.sizes) <= 1_000
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # 36 MiB a million ints
    (letter,) = riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl")
    assert (1, "truncated") == (letter.offset, letter.reason)
    assert {"memory": 3} == report.positions
