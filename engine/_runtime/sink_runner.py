"""One sink of a run: its write policies, outage log, wake-ups, counters and its task's loop.

A pipeline that ends in one sink has one runner; a fan-out has one per
branch. Each runner writes the batches of its own channel and releases each
batch's ack once its write is durable, so a fanned-out batch is done when
every branch's runner has released its share (see :mod:`riprap._runtime.fan_out`).

A sink with ``start_write`` (see :class:`~riprap.Sink`) has its next batches
sent while earlier ones wait for their acknowledgements (see
:class:`_Pipelined`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn, final

import anyio

from riprap._core.errors import DataError, EngineError, PipelineError
from riprap._core.protocols import Sink, SinkContext
from riprap._core.records import Batch, IndexOrigin
from riprap._runtime.segments import traced
from riprap._runtime.sink_feed import SinkFeed
from riprap._runtime.sink_outage import SinkOutageLog, outage_error
from riprap.observability._report import StepCounters
from riprap.policies import Policies, PolicyHook, PolicyStack, Shelter, move_on_after
from riprap.policies._classify import DEFAULT_CLASSIFIER
from riprap.policies._marks import attempts_of
from riprap.policies._timeout import to_seconds

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Sequence

    from riprap._core.clock import Clock
    from riprap._core.options import PipelineOptions
    from riprap._runtime.channel import ChannelReceiver
    from riprap._runtime.routing import Router
    from riprap.observability._tracing import Tracing

log = logging.getLogger("riprap.runtime")

PIPELINED_WRITES = 4
"""Batches a sink with ``start_write`` may have on their way at once."""


def retry_deadline(policies: Policies | None) -> float | None:
    """Seconds a stack's retry keeps trying, if it has a retry with a deadline."""
    retry = None if policies is None else policies.retry
    return None if retry is None or retry.timeout is None else to_seconds(retry.timeout)


def stack_clock(policies: Policies | None, clock: Clock) -> Clock:
    """A breaker keeps its own clock; the stack must use the same one."""
    if policies is not None and policies.breaker is not None:
        return policies.breaker.clock
    return clock


@final
class SinkRunner:
    """Writes one sink's batches behind its policies; counts them; releases their acks.

    Args:
        sink: The sink.
        policies: Its policies (``None``: writes are not retried).
        pipeline: The pipeline's name, for errors and logs.
        options: The pipeline's options (clock, redactor, dead letters, limits).
        router: Where records the sink rejects go (``DataError``).
        hooks: Policy hooks of its writes (counters, the run log, the user's).
        context_hooks: Policy hooks a sink's ``bind`` gets (retries its client makes).
        shelter: Owner of calls abandoned by attempt timeouts.
        tracing: Spans per batch, if tracing is on.
        sinks: How many sinks the run has. A sink that holds records back is
            told a share of ``max_in_flight``, so that all of them together
            still leave the source room to read.
    """

    __slots__ = (
        "_classifier",
        "_delivery_timeout",
        "_options",
        "_pipeline",
        "_pipelined",
        "_router",
        "_tracing",
        "_write_call",
        "counters",
        "feed",
        "outage",
        "sink",
    )

    def __init__(
        self,
        sink: Sink,
        policies: Policies | None,
        *,
        pipeline: str,
        options: PipelineOptions,
        router: Router,
        hooks: Sequence[PolicyHook],
        context_hooks: Sequence[PolicyHook],
        shelter: Shelter,
        tracing: Tracing | None,
        sinks: int = 1,
    ) -> None:
        self.sink = sink
        self._pipeline = pipeline
        self._options = options
        self._router = router
        self._tracing = tracing
        retry = None if policies is None else policies.retry
        self._classifier = DEFAULT_CLASSIFIER if retry is None else retry.classifier
        self.outage = SinkOutageLog(pipeline, sink.name, options.redactor, retry_deadline(policies))
        if policies is not None:
            # Writes stay in the sink task, unsheltered: a write that completed is
            # then always acknowledged, never lost to a cancellation and repeated.
            policies = replace(policies, attempt_grace=None)
        self._write_call = PolicyStack(
            policies,
            stage=sink.name,
            clock=stack_clock(policies, options.clock),
            hooks=(*hooks, self.outage),
            shelter=shelter,
        ).wrap(sink.write)
        self.feed = self._bind(context_hooks, options.max_in_flight // sinks)
        self.counters = StepCounters(sink.name)
        start_write = getattr(sink, "start_write", None)
        self._pipelined: Callable[[Batch], Awaitable[Awaitable[None]]] | None = (
            start_write if _can_pipeline(start_write, policies, self.feed, tracing) else None
        )
        self._delivery_timeout = (
            None
            if policies is None or policies.attempt_timeout is None
            else to_seconds(policies.attempt_timeout)
        )

    def _bind(self, hooks: Sequence[PolicyHook], max_in_flight: int) -> SinkFeed | None:
        """Give a sink that holds records back its context, and wake-ups (``bind``, ``wake_at``)."""
        sink, options = self.sink, self._options
        bind = getattr(sink, "bind", None)
        if bind is not None:
            bind(
                SinkContext(
                    pipeline=self._pipeline,
                    clock=options.clock,
                    batch_size=options.batch_size,
                    max_in_flight=max_in_flight,
                    policy_hooks=(*hooks, self.outage),
                )
            )
        wake_at = getattr(sink, "wake_at", None)
        return None if wake_at is None else SinkFeed(wake_at, sink.flush, options.clock)

    def draining(self) -> AbstractContextManager[None]:
        """While partitions drain, a sink that holds records back writes them after each batch."""
        return nullcontext() if self.feed is None else self.feed.draining()

    async def run(self, receive: ChannelReceiver[Batch]) -> None:
        """Write every batch of ``receive`` until it ends; release each batch's ack when durable."""
        counters = self.counters
        feed = self.feed
        tracing = self._tracing
        name = self.sink.name
        if self._pipelined is not None:
            await _Pipelined(self, self._pipelined).run(receive)
            return
        batches: AsyncIterable[Batch] = receive if feed is None else feed.over(receive)
        async with receive:
            async for batch in batches:
                counters.records_in += len(batch.items)
                started = time.perf_counter()
                with traced(tracing, name, batch):
                    await self.write(batch)
                self.written(batch, started)
                del batch  # not kept alive while waiting for the next one

    @property
    def delivery_timeout(self) -> float | None:
        """Seconds a started write may take to be acknowledged (the sink's attempt timeout)."""
        return self._delivery_timeout

    async def wait_for(self, deliveries: list[asyncio.Future[None]]) -> None:
        """Wait until ``deliveries`` are done, or the delivery timeout passed."""
        pending = [d for d in deliveries if not d.done()]
        if not pending:
            return
        seconds = self._delivery_timeout
        if seconds is None:
            await asyncio.wait(pending)
            return
        async with move_on_after(seconds, clock=self._options.clock):
            await asyncio.wait(pending)

    def redact(self, text: str) -> str:
        """``text`` without what the pipeline's redactor hides."""
        return self._options.redactor.redact(text)

    def written(self, batch: Batch, started: float) -> None:
        """``batch`` is durable: count it and release its ack."""
        self.counters.timed(started)
        self.outage.written(self._options.clock.monotonic())
        self.counters.records_out += len(batch.items)
        self._router.observe_written(len(batch.items))
        batch.ack.release()

    async def write(self, batch: Batch) -> None:
        """Write a batch; on a ``DataError`` write its records one by one to find the bad ones."""
        clock = self._options.clock
        started = clock.monotonic()
        router = self._router
        name = self.sink.name
        try:
            await self._write_call(batch)
        except DataError as error:
            if self._options.dead_letter is None or len(batch.items) == 1:
                router.handle(name, batch, 0, batch.items[0], error)
                await router.flush()
                batch.items = []
                return
            kept: list[Any] = []
            for i, item in enumerate(batch.items):
                single = Batch([item], batch.ack, IndexOrigin(batch.origin, [i]))
                try:
                    await self._write_call(single)
                    kept.append(item)
                except DataError as item_error:
                    router.handle(name, batch, i, item, item_error)
                except Exception as item_error:
                    self._stop_for(batch, i, item_error)
            await router.flush()
            batch.items = kept
        except Exception as error:
            if self._classifier.classify(error) == "transient":
                self._gave_up(error, clock.monotonic() - started)
            if isinstance(error, EngineError):
                raise
            self._stop_for(batch, 0, error)

    def _gave_up(self, error: Exception, seconds: float) -> NoReturn:
        """The sink kept failing transiently until its retry gave up: stop, blaming no record."""
        name = self.sink.name
        raise PipelineError(
            pipeline=self._pipeline,
            stage=name,
            partition=None,
            offset=None,
            error=outage_error(name, error, seconds, attempts_of(error)),
            redact=self._options.redactor.redact,
        ) from error

    def _stop_for(self, batch: Batch, index: int, error: Exception) -> NoReturn:
        partition, offset = batch.position(index)
        raise PipelineError(
            pipeline=self._pipeline,
            stage=self.sink.name,
            partition=partition,
            offset=offset,
            error=error,
            redact=self._options.redactor.redact,
        ) from error


def _can_pipeline(
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
class _Pipelined:
    """A sink's writes overlapping: the next batches go out while earlier ones are acknowledged.

    Up to :data:`PIPELINED_WRITES` batches are on their way; the oldest is
    waited for when that many are, or when no batch is waiting in the channel.
    Acks are released in input order. When a delivery fails, every batch still
    on its way is waited for and then written again, the failed one first, in
    order, through the sink's policies and ``write`` (retries, records the
    sink rejects dead-lettered, the run stopped naming the batch): the last
    copy of every record is then in input order, and a failure costs
    duplicates, never a record.
    """

    __slots__ = ("_runner", "_start", "_window")

    def __init__(
        self, runner: SinkRunner, start: Callable[[Batch], Awaitable[Awaitable[None]]]
    ) -> None:
        self._runner = runner
        self._start = start
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
        await runner.wait_for([delivery])
        error: BaseException | None
        if not delivery.done():
            error = TimeoutError(f"not acknowledged within {runner.delivery_timeout} s")
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
        log.warning(
            "sink %s: a write failed on its way (%s); writing it and the %d after it again",
            runner.sink.name,
            runner.redact(f"{type(error).__name__}: {error}"),
            len(window) - 1,
        )
        await runner.wait_for([s.delivery for s in window])
        while window:
            sending = window.popleft()
            _observed(sending.delivery)
            await runner.write(sending.batch)
            runner.written(sending.batch, sending.started)


@contextmanager
def draining_all(runners: Sequence[SinkRunner]) -> Iterator[None]:
    """:meth:`SinkRunner.draining` of every sink at once."""
    with ExitStack() as stack:
        for runner in runners:
            stack.enter_context(runner.draining())
        yield
