"""Deadlines of one duration on the event loop's clock, watched by a single timer.

``asyncio.timeout`` costs about 4.5 µs a call on CPython 3.11 (a timer handle
scheduled and cancelled, plus its state machine), paid by every attempt of
every record that has a timeout policy. A timeout layer's deadlines all have
the same length, so they expire in the order they were set: this watch keeps
them in insertion order and arms one timer for the earliest. Starting and
ending a deadline is a dict insert and delete; the timer fires about once per
duration, not once per call. Expiry cancels the task, and the wrapper turns
that cancellation (and only that one) into :class:`~riprap.policies.StageTimeout`,
counting cancellations as ``asyncio.timeout`` does so outer cancel scopes
still win.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    import asyncio

RECANCEL_EVERY = 0.05
"""Seconds between the cancellations an expired deadline sends a call that ignores them."""


@final
class Deadline:
    """One running call's deadline.

    ``fired`` counts the cancellations sent to ``task`` for it (the wrapper
    takes back as many with ``task.uncancel()``), or is 1 once ``waiter`` was
    woken instead.
    """

    __slots__ = ("_again", "at", "fired", "task", "waiter")

    def __init__(
        self,
        at: float,
        task: asyncio.Task[Any],
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        self.at = at
        self.task = task
        self.waiter = waiter
        self.fired = 0
        self._again: asyncio.TimerHandle | None = None

    def expire(self) -> None:
        """The deadline passed: wake the waiter, or cancel the task (again, on a timer)."""
        waiter = self.waiter
        if waiter is not None:
            self.fired = 1
            if not waiter.done():
                waiter.set_result(None)
            return
        task = self.task
        if task.done():  # ended without its wrapper's cleanup (never, short of a lost frame)
            return
        self.fired += 1
        task.cancel()
        self._again = task.get_loop().call_later(RECANCEL_EVERY, self.expire)

    def wake(self, _task: object = None) -> None:
        """Wake the waiter (a done-callback of the sheltered call's task)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def withdraw(self) -> None:
        """The call ended: send no further cancellation."""
        if self._again is not None:
            self._again.cancel()
            self._again = None


@final
class _LoopWatch:
    """The deadlines of one watch on one event loop."""

    __slots__ = ("handle", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: OrderedDict[Deadline, None] = OrderedDict()
        self.handle: asyncio.TimerHandle | None = None

    def fire(self) -> None:
        self.handle = None
        now = self.loop.time()
        pending = self.pending
        while pending:
            deadline = next(iter(pending))
            if deadline.at > now:
                self.handle = self.loop.call_at(deadline.at, self.fire)
                return
            del pending[deadline]
            deadline.expire()


@final
class DeadlineWatch:
    """Deadlines ``seconds`` after their start, on whichever loop runs the call."""

    __slots__ = ("_last", "_loops", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: _LoopWatch | None = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWatch] = (
            weakref.WeakKeyDictionary()
        )

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Task[Any],
        waiter: asyncio.Future[None] | None = None,
    ) -> Deadline:
        """Cancel ``task`` (or wake ``waiter``) in ``seconds`` unless :meth:`stop` comes first."""
        watch = self._last
        if watch is None or watch.loop is not loop:
            watch = self._loops.get(loop)
            if watch is None:
                watch = self._loops[loop] = _LoopWatch(loop)
            self._last = watch
        deadline = Deadline(loop.time() + self.seconds, task, waiter)
        watch.pending[deadline] = None
        if watch.handle is None:
            watch.handle = loop.call_at(deadline.at, watch.fire)
        return deadline

    def stop(self, loop: asyncio.AbstractEventLoop, deadline: Deadline) -> None:
        """The call ended: forget its deadline (the timer re-arms itself when it fires)."""
        if deadline.fired:
            deadline.withdraw()
            return  # an expired deadline has left the pending ones already
        watch = self._last
        if watch is None or watch.loop is not loop:
            watch = self._loops.get(loop)
        if watch is not None:
            watch.pending.pop(deadline, None)
