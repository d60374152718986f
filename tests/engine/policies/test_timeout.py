"""Timeouts: StageTimeout under the virtual clock and the system clock, and what is not one."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio
import pytest

from riprap import ConfigError, SystemClock
from riprap.policies import StageTimeout, fail_after, move_on_after, timeout

from ._doubles import returns_when_cancelled

if TYPE_CHECKING:
    from riprap.testing import VirtualClock


@pytest.mark.anyio
async def test_slow_call_times_out_in_virtual_time(clock: VirtualClock) -> None:
    """A call slower than its timeout is cancelled at the deadline with StageTimeout."""
    cancelled_at: list[float] = []

    @timeout(5, clock=clock, kind="attempt", stage="enrich", dependency="api")
    async def slow() -> str:
        try:
            await clock.sleep(60)
        finally:
            cancelled_at.append(clock.monotonic())
        return "late"

    with pytest.raises(StageTimeout) as info:
        await slow()
    assert [5.0] == cancelled_at
    assert (5.0, "attempt", "enrich", "api") == (
        info.value.seconds,
        info.value.kind,
        info.value.stage,
        info.value.dependency,
    )
    assert isinstance(info.value, TimeoutError)


@pytest.mark.anyio
async def test_fast_call_returns_and_leaves_no_timer(clock: VirtualClock) -> None:
    """A call within its timeout returns its value and withdraws the timer."""

    @timeout(5, clock=clock)
    async def fast(x: int) -> int:
        await clock.sleep(1)
        return x * 2

    assert 42 == await fast(21)
    assert 1.0 == clock.monotonic()
    assert clock.next_deadline() is None


@pytest.mark.anyio
async def test_errors_of_the_call_propagate_unwrapped(clock: VirtualClock) -> None:
    """An exception raised by the body is not wrapped in an exception group."""

    @timeout(5, clock=clock)
    async def broken() -> None:
        await clock.sleep(1)
        raise KeyError("k")

    with pytest.raises(KeyError):
        await broken()


@pytest.mark.anyio
async def test_own_timeout_error_is_not_a_stage_timeout(clock: VirtualClock) -> None:
    """A TimeoutError the call raises itself passes through unchanged."""
    original = TimeoutError("from the driver")

    @timeout(5, clock=clock)
    async def driver_timeout() -> None:
        raise original

    with pytest.raises(TimeoutError) as info:
        await driver_timeout()
    assert info.value is original


@pytest.mark.anyio
async def test_outer_cancellation_is_not_turned_into_a_timeout(clock: VirtualClock) -> None:
    """Cancelling the caller cancels the call; no StageTimeout appears."""
    outcome: list[str] = []

    @timeout(50, clock=clock)
    async def hang() -> None:
        await clock.sleep(1000)

    async def caller() -> None:
        try:
            await hang()
        except StageTimeout:
            outcome.append("timeout")
            raise
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await clock.sleep(10)
        tg.cancel_scope.cancel()
    assert ["cancelled"] == outcome


@pytest.mark.anyio
async def test_move_on_after_ends_the_block_quietly(clock: VirtualClock) -> None:
    """move_on_after cancels the body at the deadline and reports it as expired."""
    async with move_on_after(3, clock=clock) as scope:
        await clock.sleep(10)
    assert scope.expired
    assert 3.0 == clock.monotonic()


@pytest.mark.anyio
async def test_fail_after_with_the_system_clock_uses_a_cancel_scope() -> None:
    """With the real clock a zero-length deadline fires at the first checkpoint."""
    never = anyio.Event()
    with pytest.raises(StageTimeout):
        async with fail_after(0.0, clock=SystemClock(), kind="total"):
            await never.wait()


@pytest.mark.anyio
async def test_system_clock_decorator_path() -> None:
    """The decorator's real-clock path returns values and raises StageTimeout on expiry."""
    never = anyio.Event()

    @timeout(1e-9, clock=SystemClock())
    async def hang() -> None:
        await never.wait()

    @timeout(60, clock=SystemClock())
    async def quick() -> str:
        return "ok"

    assert "ok" == await quick()
    with pytest.raises(StageTimeout):
        await hang()


def test_non_positive_timeout_is_a_config_error() -> None:
    """A zero or negative timeout is refused when the policy is built."""
    with pytest.raises(ConfigError):
        timeout(0)
    with pytest.raises(ConfigError):
        timeout(-1.0)


@pytest.mark.anyio
async def test_deadline_coinciding_with_a_wake_up_still_cancels(clock: VirtualClock) -> None:
    """A body that wakes at the very instant of the deadline is still cancelled there."""
    reached: list[float] = []

    async def body() -> None:
        async with fail_after(5, clock=clock):
            await clock.sleep(3)
            await clock.sleep(2)  # wakes at t=5, together with the timer
            reached.append(clock.monotonic())
            await clock.sleep(1)
            reached.append(clock.monotonic())

    with pytest.raises(StageTimeout):
        await body()
    assert [5.0] == reached
    assert 5.0 == clock.monotonic()


@pytest.mark.anyio
async def test_system_clock_timeout_keeps_own_timeouts_and_outer_cancellation() -> None:
    """On the real clock, a call's own TimeoutError and an outer cancel pass through as such."""

    @timeout(60, clock=SystemClock())
    async def own_timeout() -> None:
        raise TimeoutError("the call's own")

    with pytest.raises(TimeoutError, match="the call's own") as info:
        await own_timeout()
    assert not isinstance(info.value, StageTimeout)

    @timeout(60, clock=SystemClock())
    async def forever() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0.001) as outer:
        await forever()
    assert outer.cancelled_caught

    @timeout(0.001, clock=SystemClock(), kind="attempt")
    async def slow() -> None:
        await anyio.sleep_forever()

    with pytest.raises(StageTimeout):
        await slow()


@pytest.mark.anyio
async def test_system_clock_deadlines_expire_each_at_its_own_time() -> None:
    """Calls of one timeout layer share a timer, yet each expires at its start + seconds."""
    timed_out: list[str] = []
    finished: list[str] = []
    release = anyio.Event()
    first_timeout = anyio.Event()

    @timeout(0.02, clock=SystemClock(), kind="attempt")
    async def wait_for_release(name: str) -> None:
        await release.wait()
        finished.append(name)

    async def call(name: str) -> None:
        try:
            await wait_for_release(name)
        except StageTimeout:
            timed_out.append(name)
            first_timeout.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "first")
        await anyio.sleep(0.01)
        tg.start_soon(call, "second")
        await first_timeout.wait()
        # The first deadline passed; the second, set 10 ms later, may not have.
        release.set()
    assert "first" == timed_out[0]
    assert ["first", "second"] == sorted(timed_out + finished)


@pytest.mark.anyio
async def test_system_clock_finished_calls_leave_no_cancellation_behind() -> None:
    """After many quick calls the task is never cancelled once their deadlines pass."""

    @timeout(0.005, clock=SystemClock())
    async def quick(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        return i

    assert list(range(200)) == [await quick(i) for i in range(200)]
    await anyio.sleep(0.02)  # every deadline set above has passed by now
    task = asyncio.current_task()
    assert task is not None
    assert 0 == task.cancelling()


@pytest.mark.anyio
async def test_system_clock_call_that_swallows_the_cancellation_leaves_none_pending() -> None:
    """A call that catches its deadline's cancellation and returns keeps its result."""

    stubborn = timeout(0.001, clock=SystemClock())(returns_when_cancelled)
    assert "swallowed" == await stubborn()
    task = asyncio.current_task()
    assert task is not None
    assert 0 == task.cancelling()
    await anyio.sleep(0.005)  # no stray cancellation arrives later
