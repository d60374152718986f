"""One channel fed by several tasks: the sources of a merge, or the stages writing a side output.

A :class:`~riprap._runtime.channel.ChannelSender` has one sending task (one
waiter). :class:`SharedSend` lets several tasks take turns at it, one send at
a time, and closes it once the last of its users is done, so the receiver
ends only after every sender has ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import anyio

from riprap._runtime.channel import ClosesOnExit

if TYPE_CHECKING:
    from riprap._core.records import Batch
    from riprap._runtime.segments import Send


@final
class SharedSend(ClosesOnExit):
    """``users`` tasks sending into ``send`` in turn; each closes its share once.

    Args:
        send: Where every user sends (closed when the last share is closed).
        users: How many tasks share it (at least 1).
    """

    __slots__ = ("_left", "_lock", "_send")

    def __init__(self, send: Send, users: int) -> None:
        if users < 1:
            raise ValueError(f"a shared send needs at least one user, got {users}")
        self._send = send
        self._left = users
        self._lock = anyio.Lock()

    async def send(self, batch: Batch, /) -> None:
        """Send ``batch``, after any send of another user in progress."""
        async with self._lock:
            await self._send.send(batch)

    def close(self) -> None:
        """Close one user's share; the last one closes the channel."""
        if self._left == 0:
            return
        self._left -= 1
        if self._left == 0:
            self._send.close()
