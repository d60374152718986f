"""Bounded batch channels between runner tasks that yield only when they must wait.

anyio's memory object streams pass through the event loop on every send and
receive (a checkpoint each), which costs a loop iteration per batch per hop.
Here a send into a channel with room, or a receive from one holding a batch,
returns at once; a task waits (and so yields) only when the channel is full or
empty. Each channel has one sending and one receiving task, so one waiter per
side is enough. Closing either end wakes the other, as with anyio: the receiver
ends with :class:`anyio.EndOfStream` once the sender closed and the buffer is
empty, and a send after the receiver closed raises :class:`anyio.BrokenResourceError`,
unless the sending task is itself being cancelled: then the receiver closed as
part of the same cancellation (an abort cancels every runner at once, and a
runner that was between receive and send, in a call that finishes once begun,
reaches its send only after its receiver is gone), and the send is cancelled too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar, final

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

T = TypeVar("T")


@final
class _State(Generic[T]):
    __slots__ = ("capacity", "items", "receive_closed", "receiver", "send_closed", "sender")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[T] = deque()
        self.sender: asyncio.Future[None] | None = None
        self.receiver: asyncio.Future[None] | None = None
        self.send_closed = False
        self.receive_closed = False


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _wait(state: _State[T], *, sender: bool) -> None:
    waiter = asyncio.get_running_loop().create_future()
    if sender:
        state.sender = waiter
    else:
        state.receiver = waiter
    try:
        await waiter
    finally:
        if sender:
            state.sender = None
        else:
            state.receiver = None


class ClosesOnExit:
    """An end that ``async with`` closes on the way out (channel ends, forks, shared sends)."""

    __slots__ = ()

    def close(self) -> None:
        """Close this end."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@final
class ChannelSender(ClosesOnExit, Generic[T]):
    """The sending end of a :func:`channel`."""

    __slots__ = ("_state",)

    def __init__(self, state: _State[T]) -> None:
        self._state = state

    async def send(self, item: T) -> None:
        """Put ``item`` in the channel, waiting while it is full.

        Raises:
            anyio.BrokenResourceError: The receiving end is closed (and this task
                is not being cancelled: then the cancellation is raised).
            anyio.ClosedResourceError: This end is closed.
        """
        state = self._state
        if state.send_closed:
            raise anyio.ClosedResourceError
        while len(state.items) >= state.capacity and not state.receive_closed:
            await _wait(state, sender=True)
        if state.receive_closed:
            # A receiver closed by the cancellation that is also ending this task
            # is not broken: the task ends with that cancellation.
            await anyio.lowlevel.checkpoint_if_cancelled()
            raise anyio.BrokenResourceError
        state.items.append(item)
        _wake(state.receiver)

    def close(self) -> None:
        """No more sends: the receiver ends after what is buffered."""
        self._state.send_closed = True
        _wake(self._state.receiver)


@final
class ChannelReceiver(ClosesOnExit, Generic[T]):
    """The receiving end of a :func:`channel`; iterate it to get items until the sender closes."""

    __slots__ = ("_state",)

    def __init__(self, state: _State[T]) -> None:
        self._state = state

    async def receive(self) -> T:
        """The next item, waiting while the channel is empty.

        Raises:
            anyio.EndOfStream: The sender closed and every item was received.
            anyio.ClosedResourceError: This end is closed.
        """
        state = self._state
        while not state.items:
            if state.receive_closed:
                raise anyio.ClosedResourceError
            if state.send_closed:
                raise anyio.EndOfStream
            await _wait(state, sender=False)
        item = state.items.popleft()
        _wake(state.sender)
        return item

    def buffered(self) -> int:
        """Items waiting in the channel."""
        return len(self._state.items)

    def close(self) -> None:
        """No more receives: a waiting or later send fails."""
        self._state.receive_closed = True
        _wake(self._state.sender)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


def channel(capacity: int) -> tuple[ChannelSender[T], ChannelReceiver[T]]:
    """A channel holding up to ``capacity`` (at least 1) items, as ``(sender, receiver)``."""
    if capacity < 1:
        raise ValueError(f"channel capacity must be at least 1, got {capacity}")
    state: _State[T] = _State(capacity)
    return ChannelSender(state), ChannelReceiver(state)
