"""Bulkhead: concurrency limit, waiting line, rejection and statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from riprap import ConfigError
from riprap.policies import Bulkhead, BulkheadFullError, CallRejected, PolicyEvent

if TYPE_CHECKING:
    from riprap.testing import VirtualClock


@pytest.mark.anyio
async def test_hundred_callers_limit_four(clock: VirtualClock) -> None:
    """100 concurrent callers through a limit of 4 all complete, never more than 4 inside."""
    bulkhead = Bulkhead(4, name="api")
    inside = peak = done = 0

    @bulkhead
    async def call(i: int) -> int:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await clock.sleep(1 + i % 3)
        inside -= 1
        return i

    async def caller(i: int) -> None:
        nonlocal done
        assert i == await call(i)
        done += 1

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(caller, i)
        await clock.wait_all_tasks_blocked()
        stats = bulkhead.statistics()
        assert (4, 96) == (stats.in_use, stats.waiting)
    assert (100, 4) == (done, peak)
    assert (0, 0) == (bulkhead.statistics().in_use, bulkhead.statistics().waiting)


@pytest.mark.anyio
async def test_waiters_are_served_in_fifo_order(clock: VirtualClock) -> None:
    """Callers that had to wait get slots in arrival order."""
    bulkhead = Bulkhead(1)
    order: list[int] = []

    async def caller(i: int) -> None:
        async with bulkhead:
            order.append(i)
            await clock.sleep(1)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(caller, i)
            await clock.wait_all_tasks_blocked()
    assert [0, 1, 2, 3, 4] == order


@pytest.mark.anyio
async def test_full_waiting_line_rejects(clock: VirtualClock) -> None:
    """With max_waiters set, a caller finding the line full gets BulkheadFullError and an event."""
    events: list[PolicyEvent] = []
    bulkhead = Bulkhead(2, max_waiters=3, name="api", clock=clock, hooks=(events.append,))
    gate = anyio.Event()
    outcomes: list[str] = []

    async def caller() -> None:
        try:
            await bulkhead.acquire(stage="enrich")
        except BulkheadFullError:
            outcomes.append("rejected")
            return
        try:
            await gate.wait()
            outcomes.append("ran")
        finally:
            bulkhead.release()

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(caller)
        await clock.wait_all_tasks_blocked()
        assert (2, 3, 3) == (
            bulkhead.statistics().in_use,
            bulkhead.statistics().waiting,
            bulkhead.statistics().rejected,
        )
        gate.set()
    assert (5, 3) == (outcomes.count("ran"), outcomes.count("rejected"))
    assert 3 == len(events)
    assert all(isinstance(e, CallRejected) and e.reason == "bulkhead_full" for e in events)
    assert {("enrich", "api")} == {(e.stage, e.dependency) for e in events}


@pytest.mark.anyio
async def test_zero_waiters_rejects_as_soon_as_all_slots_are_taken() -> None:
    """max_waiters=0 means fail fast when no slot is free."""
    bulkhead = Bulkhead(1, max_waiters=0)
    await bulkhead.acquire()
    with pytest.raises(BulkheadFullError) as info:
        await bulkhead.acquire()
    assert (1, 0) == (info.value.max_concurrent, info.value.max_waiters)
    bulkhead.release()
    await bulkhead.acquire()


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_the_line(clock: VirtualClock) -> None:
    """A waiter cancelled before its turn leaves the line without taking a slot."""
    bulkhead = Bulkhead(1)
    await bulkhead.acquire()
    with anyio.move_on_after(0):
        await bulkhead.acquire()
    assert (1, 0) == (bulkhead.statistics().in_use, bulkhead.statistics().waiting)
    bulkhead.release()
    assert 0 == bulkhead.statistics().in_use


@pytest.mark.anyio
async def test_slot_handed_to_a_cancelled_waiter_is_passed_on(clock: VirtualClock) -> None:
    """A slot handed over just as its waiter is cancelled goes to the next waiter."""
    bulkhead = Bulkhead(1)
    await bulkhead.acquire()
    got: list[str] = []

    async def waiter(name: str) -> None:
        await bulkhead.acquire()
        got.append(name)
        bulkhead.release()

    async with anyio.create_task_group() as tg:
        doomed = anyio.CancelScope()

        async def doomed_waiter() -> None:
            with doomed:
                await waiter("doomed")

        tg.start_soon(doomed_waiter)
        await clock.wait_all_tasks_blocked()
        tg.start_soon(waiter, "next")
        await clock.wait_all_tasks_blocked()
        doomed.cancel()  # "doomed" is cancelled but has not run yet...
        bulkhead.release()  # ...when the slot is handed to it
    assert ["next"] == got
    assert 0 == bulkhead.statistics().in_use


def test_acquire_nowait() -> None:
    """acquire_nowait takes a free slot or raises WouldBlock."""
    bulkhead = Bulkhead(1)
    bulkhead.acquire_nowait()
    with pytest.raises(anyio.WouldBlock):
        bulkhead.acquire_nowait()
    bulkhead.release()
    with pytest.raises(RuntimeError, match="released more often"):
        bulkhead.release()


def test_invalid_limits() -> None:
    """Limits below one slot or below zero waiters are refused."""
    with pytest.raises(ConfigError):
        Bulkhead(0)
    with pytest.raises(ConfigError):
        Bulkhead(1, max_waiters=-1)
