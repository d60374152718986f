"""A virtual clock for deterministic tests: time moves only when every task is blocked (I8).

:class:`VirtualClock` implements the :class:`~riprap.Clock` protocol. ``sleep()``
registers a deadline and waits; nothing wakes it until the test calls
:meth:`VirtualClock.advance` or an :meth:`VirtualClock.autojump` driver runs.
The driver waits until every other task is blocked, then jumps straight to the
earliest deadline and wakes the sleepers due there, like trio's
``MockClock(autojump_threshold=0)``. A test of minutes of backoff runs in
milliseconds and gives the same result every time.

Timeouts must go through the clock too (``anyio.fail_after`` reads the event
loop's real time): :func:`riprap.policies.fail_after` races the body against
``clock.sleep()`` when the clock is not the system clock.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, final

import anyio
import anyio.lowlevel
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@final
class _Sleeper:
    __slots__ = ("event",)

    def __init__(self, event: anyio.Event) -> None:
        self.event: anyio.Event | None = event


# Heap entries: (deadline, sequence number for FIFO among equal deadlines, sleeper).
_Entry = tuple[float, int, _Sleeper]


@final
class VirtualClock:
    """Monotonic time that advances only by :meth:`advance` or the :meth:`autojump` driver.

    Args:
        start: The initial ``monotonic()`` reading.
        wall_start: What ``time()`` returns when ``monotonic()`` reads ``start``.

    .. versionadded:: 0.1
    """

    __slots__ = ("_cancelled", "_heap", "_new_sleeper", "_now", "_seq", "_wall_offset")

    def __init__(self, *, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[_Entry] = []
        self._seq = 0
        self._cancelled = 0  # withdrawn sleepers still in the heap
        self._new_sleeper: anyio.Event | None = None

    def monotonic(self) -> float:
        """The virtual monotonic time in seconds."""
        return self._now

    def time(self) -> float:
        """Virtual wall-clock time: ``wall_start`` plus the virtual time elapsed."""
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        """Wait until virtual time has advanced by ``seconds``.

        A zero or negative duration is a plain checkpoint; an infinite one
        sleeps until cancelled. Cancelling a sleep withdraws its deadline.
        """
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        if not math.isfinite(seconds):
            await anyio.sleep_forever()
            return
        event = anyio.Event()
        sleeper = _Sleeper(event)
        self._seq += 1
        heapq.heappush(self._heap, (self._now + seconds, self._seq, sleeper))
        if self._new_sleeper is not None:
            self._new_sleeper.set()
            self._new_sleeper = None
        try:
            await event.wait()
        finally:
            sleeper.event = None  # woken or cancelled: the driver skips it
            if not event.is_set():
                self._withdraw()

    def _withdraw(self) -> None:
        # Timeouts leave a cancelled timer behind on every call that finishes in
        # time: compact the heap once they are the majority.
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].event is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper now due.

        The woken tasks run at the caller's next checkpoint; await
        :meth:`wait_all_tasks_blocked` to let them finish reacting.

        Raises:
            ValueError: If ``seconds`` is negative (monotonic time never goes back).
        """
        if seconds < 0:
            raise ValueError(f"cannot advance a monotonic clock by {seconds}s")
        self._now += seconds
        self._wake_due()

    def next_deadline(self) -> float | None:
        """The earliest pending sleep deadline, or ``None`` when nobody sleeps."""
        heap = self._heap
        while heap and heap[0][2].event is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock."""
        return sum(1 for _, _, sleeper in self._heap if sleeper.event is not None)

    def autojump(self) -> AbstractAsyncContextManager[None]:
        """Run a driver that jumps to the next deadline whenever all tasks are blocked.

        Use as ``async with clock.autojump(): ...``; the driver stops when the
        block exits.
        """
        return self._autojump()

    @asynccontextmanager
    async def _autojump(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._drive)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _drive(self) -> None:
        while True:
            await _quiesce(strict=True)
            if _threads_busy():
                # A task waiting on a worker thread is not idle: its thread is working.
                # Jumping now would let virtual timeouts expire around real I/O.
                await anyio.sleep(THREAD_POLL)
                continue
            deadline = self.next_deadline()
            if deadline is None:
                # Every task waits on something other than this clock: wait for a sleeper.
                self._new_sleeper = anyio.Event()
                await self._new_sleeper.wait()
                continue
            self._now = max(self._now, deadline)
            self._wake_due()

    async def wait_all_tasks_blocked(self) -> None:
        """Wait until every other task is blocked (see :func:`wait_all_tasks_blocked`)."""
        await wait_all_tasks_blocked()

    def _wake_due(self) -> None:
        heap = self._heap
        now = self._now
        while heap and heap[0][0] <= now:
            event = heapq.heappop(heap)[2].event
            if event is not None:
                event.set()
            else:
                self._cancelled -= 1


# Tasks spinning in a quiescence wait; they count as blocked for each other.
_IDLE_WAITERS: set[object] = set()


THREAD_POLL = 0.0005
"""Real seconds the autojump driver waits while worker threads are busy."""


def _threads_busy() -> bool:
    """Whether anyio's default worker threads are running something."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    return limiter.statistics().borrowed_tokens > 0


async def wait_all_tasks_blocked() -> None:
    """Wait until every other task of the event loop waits on something.

    Tasks inside this function count as blocked for each other, so a test and
    the autojump driver can both wait; the driver yields to the test (it only
    jumps once nobody else is waiting for quiescence). On asyncio it spins on
    zero-length sleeps (``anyio.wait_all_tasks_blocked`` sleeps a real 0.1s
    while any task is runnable, which would make virtual-time tests slow);
    elsewhere it defers to anyio.
    """
    await _quiesce(strict=False)


async def _quiesce(*, strict: bool) -> None:
    """Spin until the other tasks are blocked; ``strict``: other spinners count as busy."""
    try:
        this = asyncio.current_task()
    except RuntimeError:
        this = None
    if this is None:
        await anyio.wait_all_tasks_blocked()
        return
    loop = asyncio.get_running_loop()
    _IDLE_WAITERS.add(this)
    try:
        while True:
            await asyncio.sleep(0)
            if _quiet(loop, this, strict=strict):
                return
    finally:
        _IDLE_WAITERS.discard(this)


def _quiet(loop: asyncio.AbstractEventLoop, this: object, *, strict: bool) -> bool:
    """No task can run and no callback is queued (anyio delivers cancellation in callbacks)."""

    def idle(task: object) -> bool:
        return not strict and task in _IDLE_WAITERS

    # The same private attributes anyio's own implementation relies on; an
    # event loop without ``_ready`` (uvloop) is judged by its tasks alone.
    for handle in getattr(loop, "_ready", ()):
        if not handle.cancelled() and not idle(getattr(handle._callback, "__self__", None)):
            return False
    return all(_blocked(task) or idle(task) for task in asyncio.all_tasks() if task is not this)


def _blocked(task: asyncio.Task[object]) -> bool:
    waiter: asyncio.Future[object] | None = getattr(task, "_fut_waiter", None)
    return waiter is not None and not waiter.done()
