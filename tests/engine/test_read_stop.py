"""The read region a stop may cancel: only inside it, never a batch read, never another's cancel."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from riprap._runtime.read_stop import ReadStop

pytestmark = pytest.mark.anyio


async def read_until_stopped(stop: ReadStop, read: asyncio.Future[str]) -> str:
    """One pass of a source loop: wait for ``read`` inside the region."""
    stop.enter()
    try:
        return await read
    except asyncio.CancelledError:
        if stop.caught():
            return "stopped"
        raise
    finally:
        stop.leave()


async def test_a_stop_cancels_the_read_in_progress() -> None:
    stop = ReadStop()
    read: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(read_until_stopped(stop, read))
    await asyncio.sleep(0)  # the task is waiting inside
    stop.request()
    assert "stopped" == await task
    assert 0 == task.cancelling()  # the stop's cancel was taken back


async def test_a_stop_outside_the_region_cancels_nothing() -> None:
    """Requested between reads (a batch moving on): the next await is not cancelled."""
    stop = ReadStop()
    stop.enter()
    stop.leave()
    stop.request()
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # reached: no cancellation was sent
    assert 0 == asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_a_read_that_returns_before_the_stop_lands_keeps_its_batch() -> None:
    """Requested while the task is inside but not waiting (its read finishing): taken back."""
    stop = ReadStop()
    stop.enter()
    stop.request()  # from the task itself, e.g. a source that asks for a stop while reading
    stop.leave()  # the read returned before the loop sent the cancellation
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert 0 == asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_a_read_that_swallows_the_cancellation_still_returns_its_batch() -> None:
    """A hostile source catches the cancel and returns: its batch is kept and nothing leaks."""
    stop = ReadStop()
    release = anyio.Event()

    async def swallowing_read() -> str:
        try:
            await anyio.sleep_forever()
        except asyncio.CancelledError:
            await release.wait()
        return "batch"

    async def loop_pass() -> str:
        stop.enter()
        try:
            return await swallowing_read()
        finally:
            stop.leave()

    task = asyncio.create_task(loop_pass())
    await asyncio.sleep(0)
    stop.request()
    for _ in range(3):  # the cancel is sent, lands and is swallowed
        await asyncio.sleep(0)
    release.set()
    assert "batch" == await task
    assert 0 == task.cancelling()


async def test_another_cancellation_with_the_stop_is_not_swallowed() -> None:
    """An abort (the task group's cancel) arriving with a stop still cancels the task."""
    stop = ReadStop()
    read: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(read_until_stopped(stop, read))
    await asyncio.sleep(0)
    stop.request()
    await asyncio.sleep(0)  # the stop's cancel is sent ...
    task.cancel()  # ... and another one with it
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_without_a_stop_passes_through() -> None:
    stop = ReadStop()
    read: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(read_until_stopped(stop, read))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
