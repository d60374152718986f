"""A run whose every record in flight waits in stages for more input stops by name, never
by mistake: a stage holding part of a batch whose other parts are still on the way waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink

if TYPE_CHECKING:
    from riprap.lowlevel import Emit

pytestmark = pytest.mark.anyio


class HoldUntil:
    """A third-party stage that keeps batches until ``count`` items have come, then emits them."""

    def __init__(self, step_id: str, count: int) -> None:
        self.step_id = step_id
        self.count = count
        self.held: list[riprap.Batch] = []
        self.context: riprap.StageContext | None = None

    async def open(self, context: riprap.StageContext) -> None:
        self.context = context

    async def process(self, batch: riprap.Batch, emit: Emit) -> None:
        assert self.context is not None
        self.held.append(batch)
        self.context.park(batch)
        if sum(len(b.items) for b in self.held) >= self.count:
            await self.finish(emit)

    async def finish(self, emit: Emit) -> None:
        assert self.context is not None
        held, self.held = self.held, []
        for batch in held:
            self.context.unpark(batch)
            await emit(batch)

    def snapshot(self) -> None:
        return None

    def restore(self, state: object) -> None:
        return None


async def passed_on(n: int) -> int:
    """An async step: the expansion after it runs in a task of its own, not the source's."""
    return n


def numbers(name: str, max_in_flight: int, **options: Any) -> riprap.Pipeline:
    """100 numbers in batches of 10 under ``max_in_flight``, checkpoints in memory."""
    return riprap.Pipeline(
        name,
        checkpoint=riprap.checkpoints.MemoryCheckpoints(),
        batch_size=10,
        max_in_flight=max_in_flight,
        **options,
    ).source(IterableSource("numbers", range(100)))


def expanding(max_in_flight: int, hold: int, sink: MemorySink) -> riprap.Pipeline:
    """Each record becomes three, sent on in parts of ``batch_size`` outputs one at a
    time (queues of one batch), into a hold.
    """
    return (
        numbers("expand", max_in_flight, queue_size=1)
        .map("pass", passed_on)
        .flat_map("triple", lambda n: [n, n, n])
        .stage(HoldUntil("hold", hold))
        .sink(sink)
    )


async def test_a_stage_holding_part_of_a_batch_waits_for_the_rest() -> None:
    """One source batch in flight, cut into three parts: the first parked is no stall,
    since the parts after it hold the same ack; the run completes with every output.
    """
    sink = MemorySink()
    report = await expanding(max_in_flight=10, hold=30, sink=sink).run()
    assert sorted([n for n in range(100) for _ in range(3)]) == sorted(sink.values)
    assert {"memory": 100} == report.positions


async def test_a_stage_that_needs_more_than_the_bound_lets_in_is_named() -> None:
    """A hold of 40 outputs behind a bound of one batch (30 outputs) can never fill."""
    sink = MemorySink()
    with pytest.raises(riprap.StalledError, match=r"held by step 'hold'") as caught:
        await expanding(max_in_flight=10, hold=40, sink=sink).run()
    assert (10, "max_in_flight", 10) == (
        caught.value.records,
        caught.value.bound,
        caught.value.limit,
    )
    assert [] == sink.values


async def test_a_branch_whose_stage_holds_every_record_in_flight_is_named() -> None:
    """Fanned out, each batch is written at once by one branch and held by the other: once the
    first branch is done with them, the held records are all that is in flight.
    """
    written = MemorySink("written")
    held = MemorySink("held")
    pipeline = numbers("fan", max_in_flight=30).fan_out(
        written=riprap.Branch().sink(written),
        held=riprap.Branch().stage(HoldUntil("hold", 40)).sink(held),
    )
    with anyio.fail_after(30), pytest.raises(riprap.StalledError, match="'hold'") as caught:
        await pipeline.run()
    assert 30 == caught.value.records
    assert [] == held.values
    assert list(range(30)) == sorted(written.values)
