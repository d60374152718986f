"""What the sink task receives when the sink holds records back across writes.

A sink with ``wake_at`` (see :class:`~riprap.Sink`) keeps records until an
object is full or old enough. Batches alone cannot tell it that time has
passed on a quiet stream, so :class:`SinkFeed` waits for the next batch only
until the sink's deadline and then hands over an empty batch. While a
partition is drained it also flushes the sink before every wait, so the
drained records become done instead of waiting for more input; and so it does
while the source waits for room in flight, since what the sink holds keeps
that room taken (a filter that keeps one record a source batch pins the
whole batch's slots). Sinks without ``wake_at`` are fed straight from their
channel: nothing here is on their path.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol, final

import anyio

from riprap._core.records import Batch
from riprap._runtime.acks import Ack, InFlight
from riprap.policies import move_on_after

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from typing import Self

    from riprap._core.clock import Clock


class Receiver(Protocol):
    """The receiving end of a batch channel: ``receive`` raises ``anyio.EndOfStream`` at the end."""

    async def receive(self) -> Batch: ...

    def buffered(self) -> int: ...


def _nothing() -> None:
    """The completion of an empty wake-up batch: it holds no record."""


@final
class SinkFeed:
    """Batches for a sink that holds records back: a wake-up at its deadline, flushes in drains.

    Args:
        wake_at: The sink's ``wake_at``.
        flush: The sink's ``flush``.
        clock: The pipeline's clock, the one ``wake_at`` answers on.
        in_flight: The run's in-flight bound: while its source waits for room,
            the sink is flushed before every wait.
    """

    __slots__ = ("_clock", "_draining", "_flush", "_in_flight", "_wait", "_wake_at")

    def __init__(
        self,
        wake_at: Callable[[], float | None],
        flush: Callable[[], Awaitable[None]],
        clock: Clock,
        in_flight: InFlight | None = None,
    ) -> None:
        self._wake_at = wake_at
        self._flush = flush
        self._clock = clock
        self._draining = 0
        self._wait: anyio.CancelScope | None = None
        self._in_flight = in_flight
        if in_flight is not None:
            in_flight.on_wait(self._wake)

    def _wake(self) -> None:
        """Look again now (a drain began, or the source waits for room)."""
        if self._wait is not None:
            self._wait.cancel()

    @contextlib.contextmanager
    def draining(self) -> Iterator[None]:
        """Flush the sink before every wait while the block runs (and wake it now)."""
        self._draining += 1
        self._wake()
        try:
            yield
        finally:
            self._draining -= 1

    def over(self, receiver: Receiver) -> _Batches:
        """The batches of ``receiver``, with an empty batch whenever the sink's deadline passes."""
        return _Batches(self, receiver)

    async def next(self, receiver: Receiver) -> Batch:
        """The next batch of ``receiver``, or an empty one once the sink's deadline passed.

        Raises:
            anyio.EndOfStream: The channel ended.
        """
        while True:
            in_flight = self._in_flight
            if self._draining or (
                in_flight is not None and in_flight.waiting and not receiver.buffered()
            ):
                await self._flush()
            deadline = self._wake_at()
            if deadline is None:
                seconds = None
            else:
                seconds = deadline - self._clock.monotonic()
                if seconds <= 0:
                    return Batch([], Ack(_nothing), None)
            with anyio.CancelScope() as scope:
                self._wait = scope
                try:
                    if seconds is None:
                        return await receiver.receive()
                    async with move_on_after(seconds, clock=self._clock):
                        return await receiver.receive()
                finally:
                    self._wait = None
            # The deadline passed, a drain began or the source waits: look again.


@final
class _Batches:
    """``async for`` over a :class:`SinkFeed` (a class, not a generator: nothing to finalize)."""

    __slots__ = ("_feed", "_receiver")

    def __init__(self, feed: SinkFeed, receiver: Receiver) -> None:
        self._feed = feed
        self._receiver = receiver

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Batch:
        try:
            return await self._feed.next(self._receiver)
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
