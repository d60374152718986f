"""The virtual clock: time only moves when every task is blocked."""

from __future__ import annotations

import anyio
import pytest

from riprap.testing import VirtualClock


@pytest.mark.anyio
async def test_autojump_sleeps_in_virtual_time(clock: VirtualClock) -> None:
    """A long sleep returns at once in real time and advances virtual time exactly."""
    await clock.sleep(3600)
    assert clock.monotonic() == 3600
    assert clock.time() == 1_700_000_000.0 + 3600


@pytest.mark.anyio
async def test_sleepers_wake_in_deadline_order(clock: VirtualClock) -> None:
    """Concurrent sleepers wake in deadline order, each at its own deadline."""
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "c", 3.0)
        tg.start_soon(sleeper, "a", 1.0)
        tg.start_soon(sleeper, "b", 2.0)
    assert [("a", 1.0), ("b", 2.0), ("c", 3.0)] == woke


@pytest.mark.anyio
async def test_manual_advance_wakes_only_due_sleepers() -> None:
    """Without the driver, advance() wakes exactly the sleepers that are due."""
    clock = VirtualClock(start=10.0)
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, 1.0)
        tg.start_soon(sleeper, 5.0)
        await clock.wait_all_tasks_blocked()
        assert 2 == clock.sleepers
        clock.advance(1.0)
        await clock.wait_all_tasks_blocked()
        assert [1.0] == woke
        assert 11.0 == clock.monotonic()
        clock.advance(4.0)
    assert [1.0, 5.0] == woke


@pytest.mark.anyio
async def test_cancelled_sleep_withdraws_its_deadline() -> None:
    """A cancelled sleep no longer counts as a pending deadline."""
    clock = VirtualClock()
    with anyio.move_on_after(0):
        await clock.sleep(100)
    assert clock.next_deadline() is None
    assert 0 == clock.sleepers


@pytest.mark.anyio
async def test_advance_rejects_negative_durations() -> None:
    """Monotonic time cannot go back."""
    with pytest.raises(ValueError, match="cannot advance"):
        VirtualClock().advance(-1)


@pytest.mark.anyio
async def test_zero_sleep_is_a_checkpoint(clock: VirtualClock) -> None:
    """sleep(0) does not advance virtual time."""
    await clock.sleep(0)
    assert 0.0 == clock.monotonic()
