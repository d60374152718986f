"""The runner of an async step: ``concurrency`` calls in flight across batch boundaries.

A step that waits on a slow dependency should keep its calls in flight while
batches come and go: with calls confined to one batch, a batch smaller than
``concurrency`` gives the step less concurrency than asked, and every batch
waits for its slowest call before the next one starts. Here a fixed pool of
``concurrency`` workers takes units (a record, or all records of one key in a
batch) from a queue that the reader refills, batch after batch, as soon as the
workers have taken everything queued; a batch leaves, in arrival order, once
all its calls are done. Records of one key still run one at a time, in input
order, across batches too. A flat_map without a key takes a batch in parts
of about ``part_outputs`` outputs (at least ``concurrency`` records), each
leaving on its own, so that the outputs waiting to leave stay near the
read-ahead window instead of growing with the batch.

The futures are asyncio's: anyio's streams and events pass through the event
loop on every hand-over, which costs more than the hand-over itself here (the
same reason as :mod:`riprap._runtime.channel`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any, final

import anyio

from riprap._core.records import Batch, IndexOrigin, Record
from riprap.observability._report import StepCounters

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from riprap._core.steps import OpStep
    from riprap._runtime.segments import ErrorRouter, Receive, Send
    from riprap.observability._tracing import Tracing

_FAILED: Any = object()
_DROP: Any = object()
_KEEP: Any = object()

_WINDOW_CALLS = 4
"""A new batch is taken while fewer than this many step-concurrencies of records
wait to leave (at least two batches always: one finishing, one starting)."""


@final
class _Work:
    """One batch on its way through the step."""

    __slots__ = (
        "batch",
        "done",
        "failed",
        "left",
        "next",
        "order",
        "results",
        "span",
        "started",
    )

    def __init__(self, batch: Batch, done: asyncio.Future[None], units: int) -> None:
        self.batch = batch
        self.next = 0
        """The next record a worker takes (steps without a key: no unit objects)."""
        self.results: list[Any] = [_FAILED] * len(batch.items)
        self.failed = 0
        """Records whose call failed (their result is ``_FAILED``)."""
        self.order: list[int] = []
        self.left = units
        self.done = done
        self.started = time.perf_counter()
        self.span: Any = None


@final
class _Unit:
    """Records a worker calls one after the other; ``after`` is the previous unit of its key."""

    __slots__ = ("after", "finished", "indices", "key", "work")

    def __init__(self, work: _Work, indices: list[int]) -> None:
        self.work = work
        self.indices = indices
        self.key: Any = None
        self.after: asyncio.Future[None] | None = None
        self.finished: asyncio.Future[None] | None = None


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


@final
class AsyncSegment:
    """One map/filter/flat_map step that is not fused.

    Its function is async, wants records, has policies or a key, or is a sync
    function offloaded to worker threads (``call`` runs it there).

    Up to ``concurrency`` calls run at once, across batches; batches leave in
    arrival order, their outputs in input order unless the step is unordered
    (then in completion order within the batch).
    """

    def __init__(
        self,
        step: OpStep,
        router: ErrorRouter,
        call: Callable[[Any], Awaitable[Any]],
        counters: StepCounters | None = None,
        *,
        part_outputs: int = 1_000,
    ) -> None:
        if part_outputs < 1:
            raise ValueError(f"part_outputs must be at least 1, got {part_outputs}")
        self.part_outputs = part_outputs
        # Records of the next part of a flat_map's batch, from the expansion last seen.
        self._part_inputs = step.concurrency
        self._parted = step.kind == "flat_map" and step.key is None
        self.step = step
        self.counters = counters or StepCounters(step.step_id)
        self.router = router
        self.call = call
        self.tracer: Tracing | None = None
        self._units: deque[_Unit] = deque()
        """Units of a keyed step not yet taken by a worker."""
        self._taking: deque[_Work] = deque()
        """Batches of a step without a key whose records are not all taken yet."""
        self._untaken = 0
        """Records in ``_taking`` no worker has taken yet."""
        self._works: deque[_Work] = deque()
        self._waiting_records = 0
        self._tails: dict[Any, asyncio.Future[None]] = {}
        self._closed = False
        self._idle: deque[asyncio.Future[None]] = deque()
        """One future per worker waiting for units, woken one per unit queued (no herd)."""
        self._reader_wait: asyncio.Future[None] | None = None
        self._emitter_wait: asyncio.Future[None] | None = None

    def snapshot(self) -> dict[str, Any]:
        return {}

    async def run(self, receive: Receive, send: Send) -> None:
        async with receive, send, anyio.create_task_group() as tg:
            tg.start_soon(self._emit, send)
            for _ in range(self.step.concurrency):
                tg.start_soon(self._work)
            try:
                await self._read(receive)
            finally:
                self._closed = True
                self._wake_workers(len(self._idle))
                _wake(self._emitter_wait)

    async def _read(self, receive: Receive) -> None:
        loop = asyncio.get_running_loop()
        concurrency = self.step.concurrency
        room = _WINDOW_CALLS * concurrency
        keyed = self.step.key is not None
        async for whole in receive:
            if not self._parted:
                await self._take(whole, loop, keyed, concurrency, room)
                continue
            for batch in self._parts(whole):
                await self._take(batch, loop, keyed, concurrency, room)

    def _parts(self, batch: Batch) -> Iterator[Batch]:
        """``batch``, or a flat_map's batch in consecutive parts, each with a hold on its ack.

        The batch's own hold is given back after its last part is taken: a
        failure or a stop half-way leaves the ack pending (read again).
        """
        n = len(batch.items)
        if n <= self._part_inputs:
            yield batch
            return
        items, ack, origin = batch.items, batch.ack, batch.origin
        start = 0
        while start < n:
            end = min(n, start + self._part_inputs)
            ack.retain()
            yield Batch(items[start:end], ack, IndexOrigin(origin, list(range(start, end))))
            start = end
        ack.release()

    async def _take(
        self,
        batch: Batch,
        loop: asyncio.AbstractEventLoop,
        keyed: bool,
        concurrency: int,
        room: int,
    ) -> None:
        """Queue ``batch``'s calls, then wait while enough are queued or waiting to leave."""
        groups = self._groups(batch) if keyed else []
        units = len(groups) if keyed else len(batch.items)
        work = _Work(batch, loop.create_future(), units)
        if self.tracer is not None:
            work.span = self.tracer.start(self.step.step_id, batch)
        self._works.append(work)
        self._waiting_records += len(batch.items)
        _wake(self._emitter_wait)
        if not units:
            work.done.set_result(None)
            return
        if keyed:
            self._queue(work, groups, loop)
        else:
            self._taking.append(work)
            self._untaken += units
        self._wake_workers(units)
        # Read ahead until a step-concurrency of records waits to be taken, so a
        # worker that ends a call takes the next record at once instead of idling
        # until the next batch comes (batches smaller than the concurrency).
        while (
            self._units
            or self._untaken >= concurrency
            or (len(self._works) > 1 and self._waiting_records >= room)
        ):
            self._reader_wait = loop.create_future()
            try:
                await self._reader_wait
            finally:
                self._reader_wait = None

    def _wake_workers(self, count: int) -> None:
        """Wake up to ``count`` idle workers (a worker with units to take keeps going by itself)."""
        idle = self._idle
        while count and idle:
            waiter = idle.popleft()
            if not waiter.done():  # a cancelled worker's future is skipped
                waiter.set_result(None)
                count -= 1

    def _groups(self, batch: Batch) -> list[list[int]]:
        """Each unit's input indices: all records of a key."""
        key = self.step.key
        assert key is not None
        groups: dict[Any, list[int]] = {}
        for i in range(len(batch.items)):
            value = batch.record(i) if self.step.record else batch.items[i]
            groups.setdefault(key(value), []).append(i)
        return list(groups.values())

    def _queue(self, work: _Work, groups: list[list[int]], loop: asyncio.AbstractEventLoop) -> None:
        key = self.step.key
        assert key is not None
        batch = work.batch
        for indices in groups:
            unit = _Unit(work, indices)
            first = batch.record(indices[0]) if self.step.record else batch.items[indices[0]]
            unit.key = key(first)
            unit.after = self._tails.get(unit.key)
            unit.finished = self._tails[unit.key] = loop.create_future()
            self._units.append(unit)

    async def _work(self) -> None:
        if self.step.key is None:
            await self._work_each()
        else:
            await self._work_units()

    async def _work_each(self) -> None:
        """A worker of a step without a key: one record after another, from the oldest batch.

        The untraced call of a map is :meth:`_one` inline: a coroutine and two
        frames less per record.
        """
        taking = self._taking
        ordered = self.step.ordered
        concurrency = self.step.concurrency
        loop = asyncio.get_running_loop()
        one = self._one
        plain = self.step.kind == "map" and not self.step.record
        call, step_id, router, counters = self.call, self.step.step_id, self.router, self.counters
        while True:
            if not taking:
                if self._closed:
                    return
                waiter = loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            work = taking[0]
            i = work.next
            work.next = i + 1
            if work.next == len(work.results):
                taking.popleft()
            self._untaken -= 1
            if self._untaken == concurrency - 1:  # the reader may read ahead again
                _wake(self._reader_wait)
            if work.span is not None:
                assert self.tracer is not None
                with self.tracer.active(work.span):
                    result = await one(work.batch, i)
                if result is _FAILED:
                    work.failed += 1
                work.results[i] = result
            elif plain:
                value = work.batch.items[i]
                try:
                    result = await call(value)
                except Exception as error:
                    counters.errors += 1
                    work.failed += 1
                    router.handle(step_id, work.batch, i, value, error)
                    result = _FAILED
                else:
                    if isinstance(result, Record):
                        result = result.value
                work.results[i] = result
            else:
                result = await one(work.batch, i)
                if result is _FAILED:
                    work.failed += 1
                work.results[i] = result
            if not ordered:
                work.order.append(i)
            work.left -= 1
            if not work.left:
                work.done.set_result(None)

    async def _work_units(self) -> None:
        """A worker of a keyed step: all records of one key in a batch, after the key's last."""
        units = self._units
        ordered = self.step.ordered
        loop = asyncio.get_running_loop()
        while True:
            if not units:
                if self._closed:
                    return
                waiter = loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            unit = units.popleft()
            if not units:
                _wake(self._reader_wait)
            if unit.after is not None and not unit.after.done():
                await unit.after
            work = unit.work
            if work.span is None:
                await self._call(work, unit.indices, ordered)
            else:
                assert self.tracer is not None
                with self.tracer.active(work.span):
                    await self._call(work, unit.indices, ordered)
            if unit.finished is not None:
                unit.finished.set_result(None)
                if self._tails.get(unit.key) is unit.finished:
                    del self._tails[unit.key]
            work.left -= 1
            if not work.left:
                work.done.set_result(None)

    async def _call(self, work: _Work, indices: list[int], ordered: bool) -> None:
        for i in indices:
            result = await self._one(work.batch, i)
            if result is _FAILED:
                work.failed += 1
            work.results[i] = result
            if not ordered:
                work.order.append(i)

    async def _emit(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        works = self._works
        counters = self.counters
        # A map in input order: a batch none of whose calls failed leaves as it is.
        whole = self.step.kind == "map" and self.step.ordered
        while True:
            if not works:
                if self._closed:
                    return
                self._emitter_wait = loop.create_future()
                try:
                    await self._emitter_wait
                finally:
                    self._emitter_wait = None
                continue
            work = works[0]
            if not work.done.done():
                await work.done
            works.popleft()
            batch = work.batch
            self._waiting_records -= len(batch.items)
            _wake(self._reader_wait)
            if work.span is not None:
                work.span.end()
            if whole and not work.failed:  # every record has its one value, in order
                out, origin = work.results, batch.origin
            else:
                order = range(len(batch.items)) if self.step.ordered else work.order
                out, indices = self._collect(batch.items, work.results, order)
                origin = IndexOrigin(batch.origin, indices)
            if self._parted:  # the next parts, from this expansion
                cap = self.part_outputs
                inputs = cap * len(batch.items) // max(len(out), 1)
                self._part_inputs = max(self.step.concurrency, min(cap, inputs))
            counters.timed(work.started)
            if work.failed:  # its records' dead letters, queued by the workers
                await self.router.flush()
            counters.records_in += len(batch.items)
            counters.records_out += len(out)
            if out:
                await send.send(Batch(out, batch.ack, origin))
            else:
                batch.ack.release()

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
