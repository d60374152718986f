"""Writes that overlap: a sink's next batches go out while earlier ones are acknowledged.

A sink whose client acknowledges later (Kafka's producer) offers
``start_write``; waiting for each batch's acknowledgements before sending the
next would leave the producer's next request empty while the last is
answered. See :class:`PipelinedWrites` for the order and failure rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol, final

import anyio

from riprap.policies import move_on_after

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from riprap._core.clock import Clock
    from riprap._core.records import Batch
    from riprap._runtime.channel import ChannelReceiver
    from riprap._runtime.sink_feed import SinkFeed
    from riprap.observability._report import StepCounters
    from riprap.policies import Policies

log = logging.getLogger("riprap.runtime")

PIPELINED_WRITES = 4
"""Batches a sink with ``start_write`` may have on their way at once."""


class SinkWriter(Protocol):
    """What overlapping writes need of a sink's runner (its ordinary write path, its counts)."""

    @property
    def name(self) -> str: ...

    @property
    def counters(self) -> StepCounters: ...

    async def write(self, batch: Batch) -> None: ...

    def written(self, batch: Batch, started: float) -> None: ...


def can_pipeline(
    start_write: object, policies: Policies | None, feed: SinkFeed | None, tracing: object
) -> bool:
    """Whether a sink's writes may overlap: it can start one, and nothing needs them one by one.

    A breaker or a bulkhead must admit every write, a sink that holds records
    back is fed on its own schedule, and a span covers one write: those sinks
    write one batch at a time.
    """
    if not callable(start_write) or feed is not None or tracing is not None:
        return False
    return policies is None or (policies.breaker is None and policies.bulkhead is None)


@final
class _Sending:
    """A batch whose write was started: its delivery, and when it started."""

    __slots__ = ("batch", "delivery", "started")

    def __init__(self, batch: Batch, delivery: asyncio.Future[None], started: float) -> None:
        self.batch = batch
        self.delivery = delivery
        self.started = started


def _observed(delivery: asyncio.Future[None]) -> None:
    """Mark a delivery's outcome as seen (its batch is written again or read again)."""
    if delivery.done():
        if not delivery.cancelled():
            delivery.exception()
    else:
        delivery.add_done_callback(_observed)


@final
class PipelinedWrites:
    """A sink's writes overlapping: the next batches go out while earlier ones are acknowledged.

    Up to :data:`PIPELINED_WRITES` batches are on their way; the oldest is
    waited for when that many are, or when no batch is waiting in the channel.
    Acks are released in input order. When a delivery fails, every batch still
    on its way is waited for and then written again, the failed one first, in
    order, through the sink's policies and ``write`` (retries, records the
    sink rejects dead-lettered, the run stopped naming the batch): the last
    copy of every record is then in input order, and a failure costs
    duplicates, never a record.

    Args:
        runner: The sink's runner (its ordinary write path and its counts).
        start: The sink's ``start_write``.
        timeout: Seconds a delivery may take (the sink's attempt timeout).
        clock: The pipeline's clock, which ``timeout`` runs on.
        redact: The pipeline's redactor, for the failure it logs.
    """

    __slots__ = ("_clock", "_redact", "_runner", "_start", "_timeout", "_window")

    def __init__(
        self,
        runner: SinkWriter,
        start: Callable[[Batch], Awaitable[Awaitable[None]]],
        *,
        timeout: float | None,
        clock: Clock,
        redact: Callable[[str], str],
    ) -> None:
        self._runner = runner
        self._start = start
        self._timeout = timeout
        self._clock = clock
        self._redact = redact
        self._window: deque[_Sending] = deque()

    async def run(self, receive: ChannelReceiver[Batch]) -> None:
        runner, window = self._runner, self._window
        counters = runner.counters
        try:
            async with receive:
                while True:
                    if window and (len(window) >= PIPELINED_WRITES or not receive.buffered()):
                        await self._settle_oldest()
                        continue
                    try:
                        batch = await receive.receive()
                    except anyio.EndOfStream:
                        break
                    counters.records_in += len(batch.items)
                    started = time.perf_counter()
                    try:
                        delivery = asyncio.ensure_future(await self._start(batch))
                    except Exception:
                        # A write that could not start (a record the sink refuses, a
                        # client not ready) is written the ordinary way, after the rest.
                        while window:
                            await self._settle_oldest()
                        await runner.write(batch)
                        runner.written(batch, started)
                        continue
                    window.append(_Sending(batch, delivery, started))
                    del batch
                while window:
                    await self._settle_oldest()
        finally:
            for sending in window:
                _observed(sending.delivery)  # its records are read again by the next run

    async def _settle_oldest(self) -> None:
        """Wait for the oldest delivery; release its ack, or write everything on its way again."""
        runner, window = self._runner, self._window
        oldest = window[0]
        delivery = oldest.delivery
        await self._wait_for([delivery])
        error: BaseException | None
        if not delivery.done():
            error = TimeoutError(f"not acknowledged within {self._timeout} s")
        elif delivery.cancelled():
            error = RuntimeError("the write was cancelled on its way")
        else:
            error = delivery.exception()
        if error is not None:
            await self._write_again(error)
            return
        window.popleft()
        runner.written(oldest.batch, oldest.started)

    async def _write_again(self, error: BaseException) -> None:
        runner, window = self._runner, self._window
        runner.counters.errors += 1  # the sink's errors metric and report count it
        log.warning(
            "sink %s: a write failed on its way (%s); writing it and the %d after it again",
            runner.name,
            self._redact(f"{type(error).__name__}: {error}"),
            len(window) - 1,
        )
        await self._wait_for([s.delivery for s in window])
        while window:
            sending = window.popleft()
            _observed(sending.delivery)
            await runner.write(sending.batch)
            runner.written(sending.batch, sending.started)

    async def _wait_for(self, deliveries: list[asyncio.Future[None]]) -> None:
        """Wait until ``deliveries`` are done, or the delivery timeout passed."""
        pending = [d for d in deliveries if not d.done()]
        if not pending:
            return
        if self._timeout is None:
            await asyncio.wait(pending)
            return
        async with move_on_after(self._timeout, clock=self._clock):
            await asyncio.wait(pending)
