"""Stage runners: each is one task between two bounded batch channels.

Consecutive fusable steps become one :class:`FusedSegment` (a generated loop);
async steps run records concurrently inside a batch and re-sequence them; the
batch step regroups values; custom stages see whole batches. What a runner
does with a failing record is decided by the :class:`ErrorRouter` it is given.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol, final

import anyio

from riprap._core.records import Batch, DropsOrigin, IndexOrigin, Record, StartsOrigin
from riprap._runtime.acks import Ack, combined_ack
from riprap._runtime.channel import ChannelReceiver, ChannelSender
from riprap._runtime.fuse import Op, compile_chain
from riprap.observability._report import StepCounters

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from riprap._core.protocols import StageContext
    from riprap._core.steps import BatchStep, OpStep, StageStep
    from riprap._runtime.loop_lag import LoopWatch
    from riprap.observability._tracing import Tracing

Receive = ChannelReceiver[Batch]
Send = ChannelSender[Batch]


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
    """Consecutive sync map/filter/flat_map steps, run as one generated loop per batch."""

    def __init__(
        self, steps: Sequence[OpStep], router: ErrorRouter, watch: LoopWatch | None = None
    ) -> None:
        self.steps = tuple(steps)
        self.counters = StepCounters("+".join(step.step_id for step in steps))
        self.router = router
        self.tracer: Tracing | None = None
        self.watch = watch
        self.chain = compile_chain([Op(step.kind, step.step_id, step.fn) for step in steps])

    def snapshot(self) -> dict[str, Any]:
        return {}

    async def run(self, receive: Receive, send: Send) -> None:
        async with receive, send:
            async for batch in receive:
                out = await self.process(batch)
                if out is not None:
                    await send.send(out)

    async def process(self, batch: Batch) -> Batch | None:
        """Run the chain over one batch; ``None`` (ack released) when nothing is left."""
        if self.tracer is not None:
            with self.tracer.span(self.counters.step_id, batch):
                return await self._process(batch)
        return await self._process(batch)

    async def _process(self, batch: Batch) -> Batch | None:
        started = time.perf_counter()
        router = self.router
        steps = self.steps
        errors = 0

        def on_error(value: Any, index: int, op: int, error: Exception) -> None:
            nonlocal errors
            errors += 1
            router.handle(steps[op].step_id, batch, index, value, error)

        out, marks, dropped = self.chain.run(batch.items, on_error)
        counters = self.counters
        if self.watch is not None:  # the chain held the loop all along
            self.watch.held(counters.step_id, time.perf_counter() - started)
        counters.records_in += len(batch.items)
        counters.records_out += len(out)
        counters.errors += errors
        counters.dropped += dropped
        counters.timed(started)
        if errors:
            await router.flush()
        if not out:
            batch.ack.release()
            return None
        origin = batch.origin
        if marks:
            origin = (
                StartsOrigin(origin, marks) if self.chain.expands else DropsOrigin(origin, marks)
            )
        return Batch(out, batch.ack, origin)


def traced(tracer: Tracing | None, stage: str, batch: Batch) -> AbstractContextManager[None]:
    """A span around a batch's processing, or nothing when tracing is off."""
    return tracer.span(stage, batch) if tracer is not None else nullcontext()


_FAILED: Any = object()
_DROP: Any = object()
_KEEP: Any = object()


@final
class AsyncSegment:
    """One map/filter/flat_map step that is not fused.

    Its function is async, wants records, has policies or a key, or is a sync
    function offloaded to worker threads (``call`` runs it there).

    Up to ``concurrency`` calls run at once within a batch; outputs keep input
    order unless the step is unordered, then they follow completion order.
    """

    def __init__(
        self,
        step: OpStep,
        router: ErrorRouter,
        call: Callable[[Any], Awaitable[Any]],
        counters: StepCounters | None = None,
    ) -> None:
        self.step = step
        self.counters = counters or StepCounters(step.step_id)
        self.router = router
        self.call = call
        self.tracer: Tracing | None = None

    def snapshot(self) -> dict[str, Any]:
        return {}

    async def run(self, receive: Receive, send: Send) -> None:
        async with receive, send:
            async for batch in receive:
                started = time.perf_counter()
                with traced(self.tracer, self.step.step_id, batch):
                    out, indices = await self._process(batch)
                self.counters.timed(started)
                await self.router.flush()
                self.counters.records_in += len(batch.items)
                self.counters.records_out += len(out)
                if out:
                    await send.send(Batch(out, batch.ack, IndexOrigin(batch.origin, indices)))
                else:
                    batch.ack.release()

    async def _process(self, batch: Batch) -> tuple[list[Any], list[int]]:
        step = self.step
        items = batch.items
        results: list[Any] = [_FAILED] * len(items)
        order: list[int] = []
        # Each unit is processed sequentially; units run concurrently. Without a
        # key every record is a unit; with one, all records of a key form one.
        units = self._units(batch)
        pending = iter(units)

        async def worker() -> None:
            for unit in pending:
                for i in unit:
                    results[i] = await self._one(batch, i)
                    order.append(i)

        async with anyio.create_task_group() as tg:
            for _ in range(min(step.concurrency, len(units))):
                tg.start_soon(worker)
        return self._collect(items, results, order if not step.ordered else range(len(items)))

    def _units(self, batch: Batch) -> list[list[int]]:
        key = self.step.key
        if key is None:
            return [[i] for i in range(len(batch.items))]
        groups: dict[Any, list[int]] = {}
        for i in range(len(batch.items)):
            value = batch.record(i) if self.step.record else batch.items[i]
            groups.setdefault(key(value), []).append(i)
        return list(groups.values())

    async def _one(self, batch: Batch, i: int) -> Any:
        value: Any = batch.record(i) if self.step.record else batch.items[i]
        try:
            return self._shape(await self.call(value))
        except Exception as error:
            self.counters.errors += 1
            self.router.handle(self.step.step_id, batch, i, value, error)
            return _FAILED

    def _shape(self, result: Any) -> Any:
        kind = self.step.kind
        if kind == "filter":
            return _DROP if not result else _KEEP
        if kind == "flat_map":
            return [r.value if isinstance(r, Record) else r for r in result]
        return result.value if isinstance(result, Record) else result

    def _collect(
        self, items: list[Any], results: list[Any], order: Sequence[int]
    ) -> tuple[list[Any], list[int]]:
        out: list[Any] = []
        indices: list[int] = []
        kind = self.step.kind
        for i in order:
            result = results[i]
            if result is _FAILED:
                continue
            if result is _DROP:
                self.counters.dropped += 1
                continue
            if kind == "filter":
                out.append(items[i])
                indices.append(i)
            elif kind == "flat_map":
                out.extend(result)
                indices.extend([i] * len(result))
            else:
                out.append(result)
                indices.append(i)
        return out, indices


@final
class BatchSegment:
    """Groups values into lists of ``size``; a partial group goes out after ``timeout``."""

    def __init__(self, step: BatchStep) -> None:
        self.step = step
        self.counters = StepCounters(step.step_id)
        self.tracer: Tracing | None = None
        self._items: list[Any] = []
        self._acks: list[Ack] = []

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
        if self.step.timeout is None or not self._items:
            return await receive.receive()
        with anyio.move_on_after(self.step.timeout):
            return await receive.receive()
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
