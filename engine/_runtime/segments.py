"""Stage runners: each is one task between two bounded batch channels.

Consecutive fusable steps become one :class:`FusedSegment` (see ``fuse``),
run in the task before it (:class:`FusedSend`) when there is one; async steps
have their own runner (:mod:`riprap._runtime.async_segment`); the
batch step regroups values; custom stages see whole batches. What a runner
does with a failing record is decided by the :class:`ErrorRouter` it is given.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol, final

import anyio

from riprap._core.records import Batch, DropsOrigin, IndexOrigin, StartsOrigin
from riprap._runtime.acks import Ack, InFlight, combined_ack
from riprap._runtime.channel import ChannelReceiver, ClosesOnExit
from riprap._runtime.fuse import Op, PartsFn, compile_chain
from riprap.observability._report import StepCounters

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType
    from typing import Self

    from riprap._core.protocols import StageContext
    from riprap._core.steps import BatchStep, OpStep, StageStep
    from riprap._runtime.loop_lag import LoopWatch
    from riprap.observability._tracing import Tracing

Receive = ChannelReceiver[Batch]


class Send(Protocol):
    """Where a runner sends batches: a :class:`ChannelSender`, or the fork of a fan-out."""

    async def send(self, item: Batch, /) -> None: ...

    def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ErrorRouter(Protocol):
    """Decides what happens to a record whose step raised.

    ``handle`` returns normally when the record has been taken care of (for
    example queued for the DLQ with ``batch.ack`` retained) and raises to stop
    the run.
    """

    def handle(self, step_id: str, batch: Batch, index: int, value: Any, error: Exception) -> None:
        """Route the failure of ``batch.items[index]`` (whose value was ``value``)."""
        ...

    async def flush(self) -> None:
        """Make what ``handle`` queued durable (called after every batch)."""
        ...


class Segment(Protocol):
    """One runner task."""

    counters: StepCounters
    tracer: Tracing | None

    async def run(self, receive: Receive, send: Send) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


@final
class FusedSegment:
    """Consecutive sync map/filter/flat_map steps, run as one chain per batch (see fuse.py).

    A chain with a flat_map hands its outputs on ``part_outputs`` at a time
    (the pipeline's ``batch_size``), also in the middle of one record's,
    each part sent before the next is made, so that what a batch holds does
    not grow with the expansion: the channel's bound stops the chain as it
    stops a source.
    """

    def __init__(
        self,
        steps: Sequence[OpStep],
        router: ErrorRouter,
        watch: LoopWatch | None = None,
        *,
        part_outputs: int = 1_000,
    ) -> None:
        if part_outputs < 1:
            raise ValueError(f"part_outputs must be at least 1, got {part_outputs}")
        self.part_outputs = part_outputs
        self.steps = tuple(steps)
        self.counters = StepCounters("+".join(step.step_id for step in steps))
        self.router = router
        self.tracer: Tracing | None = None
        self.watch = watch
        self.chain = compile_chain([Op(step.kind, step.step_id, step.fn) for step in steps])
        # Per step, for metrics keyed by step id (see riprap._runtime.step_stats).
        self.op_errors = [0] * len(self.steps)
        self.op_counts = [0] * len(self.steps)
        self._filters = tuple(i for i, step in enumerate(self.steps) if step.kind == "filter")
        self._batch: Batch | None = None  # the batch the chain is running over
        self._errors = 0  # its records that failed so far

    def snapshot(self) -> dict[str, Any]:
        return {}

    async def run(self, receive: Receive, send: Send) -> None:
        async with receive, send:
            async for batch in receive:
                await self.pass_on(batch, send)

    async def pass_on(self, batch: Batch, send: Send) -> None:
        """Process ``batch`` and send what is left; an expanding chain sends it in parts."""
        parts = self.chain.parts
        if parts is None:
            out = await self.process(batch)
            if out is not None:
                await send.send(out)
        elif self.tracer is not None:
            with self.tracer.span(self.counters.step_id, batch):
                await self._pass_on_parts(batch, send, parts)
        else:
            await self._pass_on_parts(batch, send, parts)

    async def _pass_on_parts(self, batch: Batch, send: Send, parts: PartsFn) -> None:
        """Run an expanding chain over ``batch``, sending its outputs on ``part_outputs`` at a time.

        Each part takes a hold on the batch's ack; the batch's own is given
        back after the last part is out, so a failure half-way leaves the ack
        pending (its records are read again).
        """
        router = self.router
        steps = self.steps
        op_errors = self.op_errors
        counters = self.counters
        errors = flushed = 0

        def on_error(value: Any, index: int, op: int, error: Exception) -> None:
            nonlocal errors
            errors += 1
            op_errors[op] += 1
            router.handle(steps[op].step_id, batch, index, value, error)

        items, ack, origin = batch.items, batch.ack, batch.origin
        written = 0
        last: list[int] | None = None
        started = time.perf_counter()
        for out, marks, first, counts in parts(items, on_error, self.part_outputs):
            if self.watch is not None:  # the chain held the loop for this part
                self.watch.held(counters.step_id, time.perf_counter() - started)
            counters.timed(started)
            last = counts
            if errors > flushed:
                flushed = errors
                await router.flush()
            if out:
                written += len(out)
                inputs = origin
                if first or len(marks) < len(items):
                    inputs = IndexOrigin(origin, list(range(first, first + len(marks))))
                ack.retain()
                await send.send(Batch(out, ack, StartsOrigin(inputs, marks)))
            started = time.perf_counter()
        if last is not None and any(last):
            for op, count in enumerate(last):
                self.op_counts[op] += count
            counters.dropped += sum(last[op] for op in self._filters)
        counters.records_in += len(items)
        counters.records_out += written
        counters.errors += errors
        ack.release()

    async def process(self, batch: Batch) -> Batch | None:
        """Run the chain over one batch; ``None`` (ack released) when nothing is left."""
        if self.tracer is None:
            out = self.run_chain(batch)
        else:
            with self.tracer.span(self.counters.step_id, batch):
                out = self.run_chain(batch)
        if self._errors:
            await self.router.flush()
        if out is None:
            batch.ack.release()
        return out

    def _on_error(self, value: Any, index: int, op: int, error: Exception) -> None:
        """A record failed in step ``op`` of the batch being run: route it (may raise)."""
        self._errors += 1
        self.op_errors[op] += 1
        assert self._batch is not None
        self.router.handle(self.steps[op].step_id, self._batch, index, value, error)

    def run_chain(self, batch: Batch) -> Batch | None:
        """The chain over ``batch``, counted: what is left, or ``None`` when nothing is.

        Synchronous, so the batch and its error count can live on the segment
        (no closure per batch); records that failed went to the router, and
        ``_errors`` says how many, for the caller to flush.
        """
        perf_counter = time.perf_counter
        started = perf_counter()
        self._errors = 0
        self._batch = batch
        try:
            out, marks, counts = self.chain.run(batch.items, self._on_error)
        finally:
            self._batch = None
        elapsed = perf_counter() - started
        if any(counts):
            op_counts = self.op_counts
            for op, count in enumerate(counts):
                op_counts[op] += count
            self.counters.dropped += sum(counts[op] for op in self._filters)
        counters = self.counters
        if self.watch is not None:  # the chain held the loop all along
            self.watch.held(counters.step_id, elapsed)
        counters.records_in += len(batch.items)
        counters.records_out += len(out)
        counters.errors += self._errors
        counters.took(elapsed)
        if not out:
            return None
        origin = batch.origin
        if marks:
            origin = (
                StartsOrigin(origin, marks) if self.chain.expands else DropsOrigin(origin, marks)
            )
        return Batch(out, batch.ack, origin)


@final
class FusedSend(ClosesOnExit):
    """A send that runs a fused segment first: the segment runs in its sender's task.

    A run of sync steps after an async step (or a batch step, or a stage)
    needs no task and queue of its own: the batch is processed right where it
    was finished, while its memory is hot, and one queue hop is saved.
    """

    __slots__ = ("_segment", "_send")

    def __init__(self, segment: FusedSegment, send: Send) -> None:
        self._segment = segment
        self._send = send

    async def send(self, batch: Batch, /) -> None:
        """Process ``batch`` through the segment, then send what is left."""
        await self._segment.pass_on(batch, self._send)

    def close(self) -> None:
        """Close the send behind the segment."""
        self._send.close()


_NO_SPAN: AbstractContextManager[None] = nullcontext()
"""What :func:`traced` gives when tracing is off: one shared, reentrant no-op."""


def traced(tracer: Tracing | None, stage: str, batch: Batch) -> AbstractContextManager[None]:
    """A span around a batch's processing, or nothing when tracing is off."""
    return tracer.span(stage, batch) if tracer is not None else _NO_SPAN


@final
class BatchSegment:
    """Groups values into lists of ``size``; a partial group goes out after ``timeout``.

    A partial group also goes out when the source waits for room in flight
    and nothing more is queued here: the group's records are in flight, so
    waiting for the rest could wait forever (a filter before the step that
    keeps one record a source batch holds every batch's slots).
    """

    def __init__(self, step: BatchStep, in_flight: InFlight | None = None) -> None:
        self.step = step
        self.counters = StepCounters(step.step_id)
        self.tracer: Tracing | None = None
        self._items: list[Any] = []
        self._acks: list[Ack] = []
        self._in_flight = in_flight
        self._waiting: anyio.CancelScope | None = None
        if in_flight is not None:
            in_flight.on_wait(self._source_waits)

    def _source_waits(self) -> None:
        """The source waits for room: a partial group waiting for input goes out now."""
        if self._waiting is not None:
            self._waiting.cancel()

    def snapshot(self) -> dict[str, Any]:
        return {}

    async def run(self, receive: Receive, send: Send) -> None:
        size = self.step.size
        async with receive, send:
            while True:
                try:
                    batch = await self._receive(receive)
                except anyio.EndOfStream:
                    break
                if batch is None:  # the timeout expired with a partial group
                    await self._flush(send)
                    continue
                self.counters.records_in += len(batch.items)
                items = batch.items
                start = 0
                while start < len(items):
                    take = items[start : start + size - len(self._items)]
                    self._items.extend(take)
                    start += len(take)
                    batch.ack.retain()
                    self._acks.append(batch.ack)
                    if len(self._items) >= size:
                        await self._flush(send)
                batch.ack.release()
            await self._flush(send)

    async def _receive(self, receive: Receive) -> Batch | None:
        """The next batch, or ``None`` when the partial group should go out now."""
        if not self._items:
            return await receive.receive()
        in_flight = self._in_flight
        if in_flight is not None and in_flight.waiting and not receive.buffered():
            return None
        timeout = self.step.timeout
        with anyio.CancelScope() as scope:
            if timeout is not None:
                scope.deadline = anyio.current_time() + timeout
            self._waiting = scope
            try:
                return await receive.receive()
            finally:
                self._waiting = None
        return None

    async def _flush(self, send: Send) -> None:
        if not self._items:
            return
        group, acks = self._items, self._acks
        self._items, self._acks = [], []
        self.counters.records_out += len(group)
        await send.send(Batch([group], combined_ack(acks), None))


@final
class StageSegment:
    """Runs a user :class:`~riprap.Stage`."""

    def __init__(self, step: StageStep, router: ErrorRouter) -> None:
        self.stage = step.stage
        self.counters = StepCounters(step.step_id)
        self.router = router
        self.tracer: Tracing | None = None
        self.side: tuple[Send, ...] = ()
        """The side outputs the stage emits to: closed (its share) when the stage ends."""

    async def open(self, context: StageContext) -> None:
        """Hand the stage its context, if it wants one."""
        opener = getattr(self.stage, "open", None)
        if opener is not None:
            await opener(context)

    def snapshot(self) -> dict[str, Any]:
        return {self.stage.step_id: self.stage.snapshot()}

    async def run(self, receive: Receive, send: Send) -> None:
        counters = self.counters

        async def emit(batch: Batch) -> None:
            counters.records_out += len(batch.items)
            await send.send(batch)

        try:
            async with receive, send:
                async for batch in receive:
                    counters.records_in += len(batch.items)
                    started = time.perf_counter()
                    with traced(self.tracer, self.stage.step_id, batch):
                        await self.stage.process(batch, emit)
                    counters.timed(started)
                    await self.router.flush()
                await self.stage.finish(emit)
                await self.router.flush()
        finally:
            for side in self.side:
                side.close()
