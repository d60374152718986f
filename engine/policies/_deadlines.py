"""Deadlines of one duration on the event loop's clock, watched by a single timer.

``asyncio.timeout`` costs about 4.5 µs a call on CPython 3.11 (a timer handle
scheduled and cancelled, plus its state machine), paid by every attempt of
every record that has a timeout policy. A timeout layer's deadlines all have
the same length, so they expire in the order they were set: this watch keeps
them in insertion order and arms one timer for the earliest. A running
deadline is a key and a tuple in a dict, with no object of its own; starting
and ending one is an insert and a delete, cheap enough to inline in the fused
policy stack; the timer fires about once per duration, not once per call.
Only a deadline that passes becomes a :class:`Deadline`, which cancels the
task (again until the call ends); the wrapper turns that cancellation (and
only that one) into :class:`~riprap.policies.StageTimeout`, counting
cancellations as ``asyncio.timeout`` does so outer cancel scopes still win.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from collections.abc import Callable

RECANCEL_EVERY = 0.05
"""Seconds between the cancellations an expired deadline sends a call that ignores them."""

KEYS = itertools.count()
"""Keys of running deadlines: unique in the process, so no two calls ever share one."""

Entry = tuple[float, "asyncio.Task[Any]", "asyncio.Future[None] | None"]
"""A running deadline: when it passes, the task it cancels, the waiter it wakes instead."""


@final
class Deadline:
    """A deadline that passed while its call still ran.

    ``fired`` counts the cancellations sent to ``task`` for it (the wrapper
    takes back as many with ``task.uncancel()``), or is 1 once ``waiter`` was
    woken instead.
    """

    __slots__ = ("_again", "fired", "task", "waiter")

    def __init__(self, task: asyncio.Task[Any], waiter: asyncio.Future[None] | None) -> None:
        self.task = task
        self.waiter = waiter
        self.fired = 0
        self._again: asyncio.TimerHandle | None = None

    def expire(self) -> None:
        """Wake the waiter, or cancel the task (again, on a timer)."""
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

    def withdraw(self) -> None:
        """The call ended: send no further cancellation."""
        if self._again is not None:
            self._again.cancel()
            self._again = None


def wake(waiter: asyncio.Future[None], _task: object = None) -> None:
    """Wake ``waiter`` unless it is done (a done-callback of a sheltered call's task)."""
    if not waiter.done():
        waiter.set_result(None)


@final
class LoopDeadlines:
    """The running and the passed deadlines of one watch on one event loop."""

    __slots__ = ("expired", "handle", "loop", "now", "pending", "seconds")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.loop = loop
        self.seconds = seconds
        # A dict keeps insertion order; finding the first entry walks over the slots
        # of removed ones, but only when the timer fires (about once per duration).
        self.pending: dict[int, Entry] = {}
        self.expired: dict[int, Deadline] = {}
        self.handle: asyncio.TimerHandle | None = None
        # asyncio's own loop.time() is time.monotonic() one frame deeper.
        uses_monotonic = type(loop).time is asyncio.BaseEventLoop.time
        self.now: Callable[[], float] = time.monotonic if uses_monotonic else loop.time

    def start(self, task: asyncio.Task[Any], waiter: asyncio.Future[None] | None = None) -> int:
        """Cancel ``task`` (or wake ``waiter``) in ``seconds`` unless :meth:`stop` comes first.

        Returns the deadline's key. The fused policy stack does the same inline.
        """
        key = next(KEYS)
        at = self.now() + self.seconds
        self.pending[key] = (at, task, waiter)
        if self.handle is None:
            self.handle = self.loop.call_at(at, self.fire)
        return key

    def stop(self, key: int) -> Deadline | None:
        """The call ended: forget its deadline; the :class:`Deadline` if it had passed.

        A passed deadline sends no further cancellation; the caller takes back
        those it sent (:func:`~riprap.policies._timeout.take_back`).
        """
        if self.pending.pop(key, None) is not None:
            return None
        deadline = self.expired.pop(key, None)
        if deadline is not None:
            deadline.withdraw()
        return deadline

    def fire(self) -> None:
        """Expire the deadlines that passed; arm the timer for the next one."""
        self.handle = None
        now = self.now()
        pending = self.pending
        while pending:
            key, (at, task, waiter) = next(iter(pending.items()))
            if at > now:
                self.handle = self.loop.call_at(at, self.fire)
                return
            del pending[key]
            deadline = self.expired[key] = Deadline(task, waiter)
            deadline.expire()


@final
class DeadlineWatch:
    """Deadlines ``seconds`` after their start, on whichever loop runs the call."""

    __slots__ = ("_loops", "last", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last: LoopDeadlines | None = None
        """The deadlines of the loop asked for last (the fused stack checks it inline)."""
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopDeadlines] = (
            weakref.WeakKeyDictionary()
        )

    def on(self, loop: asyncio.AbstractEventLoop) -> LoopDeadlines:
        """The deadlines running on ``loop``."""
        last = self.last
        if last is not None and last.loop is loop:
            return last
        deadlines = self._loops.get(loop)
        if deadlines is None:
            deadlines = self._loops[loop] = LoopDeadlines(loop, self.seconds)
        self.last = deadlines
        return deadlines
