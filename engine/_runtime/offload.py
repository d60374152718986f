"""Sync steps that may block, run in worker threads so that the event loop keeps working.

A sync step normally runs on the event loop (fused with its sync neighbours):
while it runs, nothing else does, so no timeout can fire and a stop, a
checkpoint, ``/healthz`` and ``/metrics`` all wait for it. A step with
``offload="thread"`` is called in a worker thread instead, and its task awaits
the thread like any other I/O: the loop stays free and the step's
``attempt_timeout`` and ``timeout`` bound the wait.

Python cannot stop a thread. When the caller gives up (a timeout fired, the
run was aborted) the call is *abandoned*: the caller goes on at once (a timed
out attempt is retried or dead-lettered like any other), the abandoned call is
counted on its step, and its thread runs on until the function returns, its
result dropped. The thread keeps its slot in the pool until then, so the
number of threads stays bounded by ``offload_threads`` however many calls hang;
while every slot is held, new calls wait for one (their attempt timeout covers
that wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.to_thread

log = logging.getLogger("riprap.runtime")

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from riprap.observability._report import StepCounters


@final
class _Call:
    """One call's state, shared by its task and its thread (and the slot's borrower)."""

    __slots__ = ("given_up", "lock", "running")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.given_up = False
        self.running = False

    def start(self) -> bool:
        """In the thread: whether to run the function (the caller may have left already)."""
        with self.lock:
            self.running = not self.given_up
            return self.running

    def finish(self) -> bool:
        """In the thread, the function returned: whether its caller had given up on it."""
        with self.lock:
            self.running = False
            return self.given_up

    def give_up(self) -> bool:
        """In the task: whether the function is still running (the call is abandoned)."""
        with self.lock:
            self.given_up = True
            return self.running


@final
class ThreadOffload:
    """A run's bounded pool of worker threads for the steps with ``offload="thread"``.

    Args:
        size: Calls running at once, abandoned ones included.

    The threads are anyio's (``anyio.to_thread``), so virtual time does not
    run ahead of a call in progress; the pool's own limiter holds a slot from
    the start of a call until its function has returned.
    """

    __slots__ = ("_slots", "abandoned_running", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.abandoned_running = 0
        """Abandoned calls whose function is still running."""
        self._slots: anyio.CapacityLimiter | None = None

    def caller(
        self, kind: str, fn: Callable[[Any], Any], counters: StepCounters
    ) -> Callable[[Any], Awaitable[Any]]:
        """``fn`` as an async callable run in the pool; abandoned calls count on ``counters``.

        A flat_map's iterable is consumed in the thread, so that a generator
        does not run its body on the loop.
        """
        work = _listing(fn) if kind == "flat_map" else fn

        async def call(value: Any) -> Any:
            return await self.run(work, value, counters)

        return call

    async def run(self, fn: Callable[[Any], Any], value: Any, counters: StepCounters) -> Any:
        """``fn(value)`` in a worker thread; cancellation abandons the call (see the module)."""
        if self._slots is None:
            self._slots = anyio.CapacityLimiter(self.size)
        slots = self._slots
        borrower = _Call()
        await slots.acquire_on_behalf_of(borrower)
        loop = asyncio.get_running_loop()

        def work() -> Any:
            if not borrower.start():  # cancelled before the thread picked it up
                return None
            try:
                return fn(value)
            finally:
                if borrower.finish():
                    _call_soon(loop, self._orphan_returned, borrower)

        try:
            result = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except BaseException:
            if borrower.give_up():
                self._abandoned(counters)
            else:
                slots.release_on_behalf_of(borrower)
            raise
        slots.release_on_behalf_of(borrower)
        return result

    def _abandoned(self, counters: StepCounters) -> None:
        counters.threads_abandoned += 1
        self.abandoned_running += 1
        log.warning(
            "step %s: a call was given up while its worker thread runs on (a thread "
            "cannot be stopped); it keeps its slot until it returns, %d of %d threads "
            "are held by abandoned calls",
            counters.step_id,
            self.abandoned_running,
            self.size,
            extra={"stage": counters.step_id},
        )

    def _orphan_returned(self, borrower: _Call) -> None:
        """An abandoned call's function has returned: its slot is free again."""
        self.abandoned_running -= 1
        assert self._slots is not None
        self._slots.release_on_behalf_of(borrower)


def _listing(fn: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def materialised(value: Any) -> list[Any]:
        return list(fn(value))

    return materialised


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[_Call], None], arg: _Call) -> None:
    """Schedule ``fn(arg)`` on ``loop`` from a worker thread, unless the loop has closed."""
    # A closed loop raises RuntimeError: nobody is left to wait for the slot then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, arg)
