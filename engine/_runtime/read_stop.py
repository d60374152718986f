"""Where a stop may cancel a source's task: only while it waits for room or reads.

A source loop enters its :class:`ReadStop` around the wait and the read of
every batch, and leaves it before the batch moves on, so a stop never cancels
a batch once read (every record read is accounted for). It is what an
``asyncio.timeout`` scope per read did, made once per loop: a read costs two
attribute writes and a ``cancelling()`` call instead of a scope's set-up.
"""

from __future__ import annotations

import asyncio
from typing import final


@final
class ReadStop:
    """The read region of one task; :meth:`request` cancels the task if it is inside.

    The cancellation is sent from a loop callback, so it always lands while
    the task waits inside the region; a task that leaves first has it taken
    back. :meth:`caught` tells a stop's cancellation from any other.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_inside", "_task")

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None
        self._inside = False
        self._cancelling = 0
        self._handle: asyncio.Handle | None = None
        self._fired = False

    def enter(self) -> None:
        """The owning task starts waiting for room or reading."""
        task = self._task
        if task is None:
            task = self._task = asyncio.current_task()
            assert task is not None
        self._cancelling = task.cancelling()
        self._inside = True

    def leave(self) -> None:
        """The owning task is done reading: nothing cancels it from here on."""
        self._inside = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fired:  # sent, but the read returned anyway (it swallowed the cancel)
            self._fired = False
            assert self._task is not None
            self._task.uncancel()

    def request(self) -> None:
        """Cancel the task's wait or read, if it is inside (called from another task)."""
        if self._inside and self._handle is None and not self._fired:
            self._handle = asyncio.get_running_loop().call_soon(self._fire)

    def caught(self) -> bool:
        """In ``except CancelledError`` inside the region: whether it was only the stop's."""
        if not self._fired:
            return False
        self._fired = False
        assert self._task is not None
        return self._task.uncancel() <= self._cancelling

    def _fire(self) -> None:
        self._handle = None
        if self._inside and self._task is not None:
            self._fired = True
            self._task.cancel()
