"""One sink of a run: its write policies, outage log, wake-ups, counters and its task's loop.

A pipeline that ends in one sink has one runner; a fan-out has one per
branch. Each runner writes the batches of its own channel and releases each
batch's ack once its write is durable, so a fanned-out batch is done when
every branch's runner has released its share (see :mod:`riprap._runtime.fan_out`).

A sink with ``start_write`` (see :class:`~riprap.Sink`) has its next batches
sent while earlier ones wait for their acknowledgements (see
:mod:`riprap._runtime.pipelined_writes`).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn, final

from riprap._core.clock import monotonic_of
from riprap._core.errors import DataError, EngineError, PipelineError
from riprap._core.protocols import Sink, SinkContext
from riprap._core.records import Batch, IndexOrigin
from riprap._runtime.pipelined_writes import PipelinedWrites, can_pipeline
from riprap._runtime.segments import traced
from riprap._runtime.sink_feed import SinkFeed
from riprap._runtime.sink_outage import SinkOutageLog, outage_error
from riprap.observability._report import StepCounters
from riprap.policies import Policies, PolicyHook, PolicyStack, Shelter
from riprap.policies._classify import DEFAULT_CLASSIFIER
from riprap.policies._marks import attempts_of
from riprap.policies._timeout import to_seconds

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Sequence

    from riprap._core.clock import Clock
    from riprap._core.options import PipelineOptions
    from riprap._runtime.acks import InFlight
    from riprap._runtime.channel import ChannelReceiver
    from riprap._runtime.routing import Router
    from riprap.observability._tracing import Tracing


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
        "_in_flight",
        "_now",
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
        in_flight: InFlight | None = None,
    ) -> None:
        self.sink = sink
        self._in_flight = in_flight
        self._pipeline = pipeline
        self._options = options
        self._router = router
        self._tracing = tracing
        self._now = monotonic_of(options.clock)
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
            start_write if can_pipeline(start_write, policies, self.feed, tracing) else None
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
        if wake_at is None:
            return None
        return SinkFeed(wake_at, sink.flush, options.clock, self._in_flight)

    def draining(self) -> AbstractContextManager[None]:
        """While partitions drain, a sink that holds records back writes them after each batch."""
        return nullcontext() if self.feed is None else self.feed.draining()

    async def run(self, receive: ChannelReceiver[Batch]) -> None:
        """Write every batch of ``receive`` until it ends; release each batch's ack when durable."""
        if self._pipelined is not None:
            options = self._options
            await PipelinedWrites(
                self,
                self._pipelined,
                timeout=self._delivery_timeout,
                clock=options.clock,
                redact=options.redactor.redact,
            ).run(receive)
            return
        counters = self.counters
        feed = self.feed
        tracing = self._tracing
        name = self.sink.name
        batches: AsyncIterable[Batch] = receive if feed is None else feed.over(receive)
        async with receive:
            async for batch in batches:
                counters.records_in += len(batch.items)
                started = time.perf_counter()
                if tracing is None:
                    await self.write(batch)
                else:
                    with traced(tracing, name, batch):
                        await self.write(batch)
                self.written(batch, started)
                del batch  # not kept alive while waiting for the next one

    @property
    def name(self) -> str:
        """The sink's name."""
        return self.sink.name

    def written(self, batch: Batch, started: float) -> None:
        """``batch`` is durable: count it and release its ack."""
        self.counters.timed(started)
        self.outage.written(self._now)
        self.counters.records_out += len(batch.items)
        self._router.observe_written(len(batch.items))
        batch.ack.release()

    async def write(self, batch: Batch) -> None:
        """Write a batch; on a ``DataError`` write its records one by one to find the bad ones."""
        now = self._now
        started = now()
        try:
            await self._write_call(batch)
        except DataError as error:
            router = self._router
            name = self.sink.name
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
                self._gave_up(error, now() - started)
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


@contextmanager
def draining_all(runners: Sequence[SinkRunner]) -> Iterator[None]:
    """:meth:`SinkRunner.draining` of every sink at once."""
    with ExitStack() as stack:
        for runner in runners:
            stack.enter_context(runner.draining())
        yield
