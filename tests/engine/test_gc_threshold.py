"""The collector's threshold while a run is active: raised at every entry point, kept when the
host's is higher, put back by the last run to end, and fewer collections where it counts."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

import riprap
from riprap import ConfigError
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.memory import IterableSource, MemorySink

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

DEFAULT = riprap.PipelineOptions().gc_threshold
HOST = (700, 10, 10)
"""CPython's own thresholds: what the host has before each test."""


@pytest.fixture(autouse=True)
def host_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*HOST)
    yield
    gc.set_threshold(*before)


class ThresholdSink:
    """Counts what it receives and keeps the collector's thresholds at each write."""

    name = "thresholds"
    idempotent = True

    def __init__(self, *, fail_open: bool = False, set_to: tuple[int, int, int] | None = None):
        self.seen: list[tuple[int, int, int]] = []
        self.count = 0
        self.fail_open = fail_open
        self.set_to = set_to

    async def open(self) -> None:
        if self.fail_open:
            raise OSError("the sink's server is down")

    async def write(self, batch: riprap.Batch) -> None:
        self.seen.append(gc.get_threshold())
        self.count += len(batch.items)
        if self.set_to is not None:
            gc.set_threshold(*self.set_to)

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def pipeline(sink: ThresholdSink, records: int = 10, **options: Any) -> riprap.Pipeline:
    return (
        riprap.Pipeline("gc", checkpoint=MemoryCheckpoints(), **options)
        .source(IterableSource("numbers", range(records)))
        .sink(sink)
    )


async def test_a_run_raises_the_threshold_and_the_end_puts_it_back() -> None:
    sink = ThresholdSink()
    await pipeline(sink).run()
    assert sink.seen == [(DEFAULT, 10, 10)]
    assert sink.count == 10
    assert gc.get_threshold() == HOST


def test_riprap_run_raises_it_too() -> None:
    sink = ThresholdSink()
    riprap.run(pipeline(sink), handle_signals=False)
    assert sink.seen == [(DEFAULT, 10, 10)]
    assert gc.get_threshold() == HOST


@pytest.mark.parametrize(
    "host",
    [pytest.param((50_000, 20, 30), id="higher"), pytest.param((0, 10, 10), id="collection-off")],
)
async def test_a_higher_threshold_or_collection_off_is_kept(host: tuple[int, int, int]) -> None:
    gc.set_threshold(*host)
    sink = ThresholdSink()
    await pipeline(sink).run()
    assert sink.seen == [host]
    assert gc.get_threshold() == host


async def test_none_leaves_the_collector_alone() -> None:
    sink = ThresholdSink()
    await pipeline(sink, gc_threshold=None).run()
    assert sink.seen == [HOST]


async def test_a_change_by_the_host_during_the_run_is_not_undone() -> None:
    sink = ThresholdSink(set_to=(1_234, 5, 6))
    await pipeline(sink).run()
    assert gc.get_threshold() == (1_234, 5, 6)


async def test_a_run_that_fails_to_start_puts_it_back() -> None:
    with pytest.raises(OSError, match="server is down"):
        await pipeline(ThresholdSink(fail_open=True)).run()
    assert gc.get_threshold() == HOST


async def test_a_run_cancelled_in_a_hanging_write_puts_it_back() -> None:
    writing = anyio.Event()

    class HangingSink(ThresholdSink):
        async def write(self, batch: riprap.Batch) -> None:
            await super().write(batch)
            writing.set()
            await anyio.sleep_forever()  # a sink that never answers

    sink = HangingSink()
    with anyio.CancelScope() as scope:
        async with pipeline(sink).open():
            await writing.wait()
            scope.cancel()
    assert scope.cancelled_caught
    assert sink.seen == [(DEFAULT, 10, 10)]
    assert gc.get_threshold() == HOST


async def test_overlapping_runs_put_it_back_when_the_last_one_ends() -> None:
    first_in, second_in, first_out = anyio.Event(), anyio.Event(), anyio.Event()
    during: list[int] = []

    async def first() -> None:
        async with pipeline(ThresholdSink(), gc_threshold=20_000).open():
            first_in.set()
            await second_in.wait()
        during.append(gc.get_threshold()[0])
        first_out.set()

    async def second() -> None:
        await first_in.wait()
        async with pipeline(ThresholdSink()).open():
            second_in.set()
            await first_out.wait()
            during.append(gc.get_threshold()[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(second)
    assert during == [20_000, 20_000]  # the first run's end leaves the second one's raise
    assert gc.get_threshold() == HOST


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_the_option_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ConfigError, match="gc_threshold"):
        riprap.Pipeline("p", gc_threshold=bad)


def _collections_during(run: riprap.Pipeline) -> int:
    """Young-generation collections while ``run`` runs (``riprap.run``), as the collector counts."""
    counted = [0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            counted[0] += 1

    gc.callbacks.append(count)
    try:
        riprap.run(run, handle_signals=False)
    finally:
        gc.callbacks.remove(count)
    return counted[0]


def test_batches_of_decoded_records_no_longer_set_off_a_collection_each() -> None:
    records = [orjson.dumps({"id": i, "tags": [i, i + 1]}) for i in range(30_000)]

    def decoding(**options: Any) -> riprap.Pipeline:
        return (
            riprap.Pipeline("decode", checkpoint=MemoryCheckpoints(), **options)
            .source(IterableSource("records", records))
            .map("parse", orjson.loads)
            .sink(MemorySink())
        )

    untouched = _collections_during(decoding(gc_threshold=None))
    raised = _collections_during(decoding())
    assert untouched >= 30  # a batch of 1,000 records (2,000 containers) each, at least
    assert raised * 5 < untouched
