"""The runtime: one task per stage between bounded channels, plus the checkpointer.

Lifecycle of a run: claim the pipeline in the checkpoint backend (fencing),
restore positions and operator state, open the sink and the source, then
source -> segments -> sink until the source ends or a stop is requested.
A stop cancels only the source's read; records in flight drain within
``drain_timeout``; the sink is flushed and a final checkpoint written. A bug
in a stage cancels the run, still writes the final checkpoint (it covers only
done records) with the crash counted, and raises :class:`~riprap.PipelineError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import secrets
import socket
import time
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, final

import anyio

from riprap._core.clock import SYSTEM_CLOCK, Clock
from riprap._core.errors import ConfigError, DataError, EngineError, PipelineError, PoisonPillError
from riprap._core.protocols import Sink, SinkContext, Source, SourceContext, StageContext
from riprap._core.records import Batch, DropsOrigin, IndexOrigin, SourceBatch, SourceOrigin
from riprap._core.steps import BatchStep, OpStep, Plan, StageStep, Step, is_async
from riprap._runtime.acks import CompletionTracker, InFlight
from riprap._runtime.channel import ChannelReceiver, ChannelSender, channel
from riprap._runtime.routing import Router
from riprap._runtime.segments import (
    AsyncSegment,
    BatchSegment,
    ErrorRouter,
    FusedSegment,
    Segment,
    StageSegment,
    traced,
)
from riprap._runtime.sink_feed import SinkFeed
from riprap.checkpoints._checkpointer import Checkpointer
from riprap.observability._alerts import AlertEvaluator
from riprap.observability._metrics import create_registry
from riprap.observability._report import PolicyCounters, RunReport, StepCounters, build_report
from riprap.observability._statistics import (
    CheckpointStatistics,
    Outcome,
    RunStatistics,
    SourceStatistics,
)
from riprap.observability._tracing import Tracing
from riprap.policies import Bulkhead, CircuitBreaker, Policies, PolicyHook, PolicyStack
from riprap.policies._classify import DEFAULT_CLASSIFIER

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Mapping,
        Sequence,
    )

    from prometheus_client import CollectorRegistry

    from riprap.checkpoints._snapshot import CheckpointBackend

FINAL_CHECKPOINT_TIMEOUT = 30.0
"""Seconds the final checkpoint may take before the run gives up on it."""


def default_owner() -> str:
    """A checkpoint owner id unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def build_segments(
    steps: Sequence[Step],
    router: ErrorRouter,
    *,
    clock: Clock = SYSTEM_CLOCK,
    hooks: Sequence[PolicyHook] = (),
) -> list[Segment]:
    """Group consecutive fusable steps into fused loops; everything else runs on its own."""
    segments: list[Segment] = []
    run: list[OpStep] = []
    for step in steps:
        if isinstance(step, OpStep) and step.fusable:
            run.append(step)
            continue
        if run:
            segments.append(FusedSegment(run, router))
            run = []
        if isinstance(step, OpStep):
            segments.append(AsyncSegment(step, router, _step_call(step, clock, hooks)))
        elif isinstance(step, BatchStep):
            segments.append(BatchSegment(step))
        elif isinstance(step, StageStep):
            segments.append(StageSegment(step, router))
    if run:
        segments.append(FusedSegment(run, router))
    return segments


def _step_call(
    step: OpStep, clock: Clock, hooks: Sequence[PolicyHook]
) -> Callable[[Any], Awaitable[Any]]:
    """The step's function as an async callable behind its policy stack."""
    call = _as_async(step.fn, step.is_async)
    if step.policies is None and step.fallback is None:
        return call
    stack = PolicyStack(
        step.policies,
        stage=step.step_id,
        clock=_stack_clock(step.policies, clock),
        hooks=hooks,
    )
    fallback = step.fallback
    if fallback is None:
        return stack.wrap(call)
    degrade = _as_async(fallback, is_async(fallback), arity=2)
    return stack.wrap(call, fallback=degrade)


def _stack_clock(policies: Policies | None, clock: Clock) -> Clock:
    """A breaker keeps its own clock; the stack must use the same one."""
    if policies is not None and policies.breaker is not None:
        return policies.breaker.clock
    return clock


def _as_async(
    fn: Callable[..., Any], is_async: bool, *, arity: int = 1
) -> Callable[..., Awaitable[Any]]:
    if is_async:
        return fn
    if arity == 2:

        async def call2(a: Any, b: Any) -> Any:
            return fn(a, b)

        return call2

    async def call(value: Any) -> Any:
        return fn(value)

    return call


def config_hash(pipeline: Plan) -> str:
    """A short hash of the pipeline's shape (steps and their functions), for dead letters."""
    parts = [pipeline.name]
    for step in pipeline.steps:
        if isinstance(step, OpStep):
            fn = getattr(step.fn, "__qualname__", type(step.fn).__qualname__)
            parts.append(f"{step.kind}:{step.step_id}:{fn}:{step.concurrency}:{step.on_error}")
        else:
            parts.append(f"{type(step).__name__}:{step.step_id}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def distinct_policies(pipeline: Plan) -> tuple[tuple[CircuitBreaker, ...], tuple[Bulkhead, ...]]:
    """Every distinct breaker and bulkhead of the pipeline's steps and sink, in pipeline order."""
    stacks = [s.policies for s in pipeline.steps if isinstance(s, OpStep) and s.policies]
    if pipeline.sink_policies is not None:
        stacks.append(pipeline.sink_policies)
    breakers = {id(p.breaker): p.breaker for p in stacks if p.breaker is not None}
    bulkheads = {id(p.bulkhead): p.bulkhead for p in stacks if p.bulkhead is not None}
    return tuple(breakers.values()), tuple(bulkheads.values())


def _default_backend(path: str) -> CheckpointBackend:
    from riprap.checkpoints._sqlite import SqliteCheckpoints

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return SqliteCheckpoints(path)


@final
class Runtime:
    """Runs one pipeline once. Use :meth:`Pipeline.open` or :meth:`Pipeline.run`."""

    def __init__(self, pipeline: Plan) -> None:
        self.pipeline = pipeline
        self.options = pipeline.options
        self.source: Source = pipeline.source
        self.sink: Sink = pipeline.sink
        self.clock = self.options.clock
        self.owns_backend = self.options.checkpoint is None
        self.backend = self.options.checkpoint or _default_backend(self.options.checkpoint_path)
        self.router = Router(
            pipeline=pipeline.name,
            source=self.source.name,
            dead_letter=self.options.dead_letter,
            redactor=self.options.redactor,
            classifier=DEFAULT_CLASSIFIER,
            clock=self.clock,
            config_hash=config_hash(pipeline),
            on_error={s.step_id: s.on_error for s in pipeline.steps if isinstance(s, OpStep)},
            guard=self.options.dlq_guard,
        )
        self.events = PolicyCounters()
        self.breakers, self.bulkheads = distinct_policies(pipeline)
        hooks = (self.events, *self.options.policy_hooks)
        self.segments = build_segments(pipeline.steps, self.router, clock=self.clock, hooks=hooks)
        tracing = self.options.tracing
        provider = None if tracing is True else tracing
        self.tracing = Tracing(pipeline.name, provider) if tracing else None
        for segment in self.segments:
            segment.tracer = self.tracing
        sink_policies = pipeline.sink_policies
        self._sink_write = PolicyStack(
            sink_policies,
            stage=self.sink.name,
            clock=_stack_clock(sink_policies, self.clock),
            hooks=hooks,
        ).wrap(self.sink.write)
        self.sink_feed = self._bind_sink()
        self.source_outcomes: dict[str, int] = {}
        self.quarantine: dict[str, dict[int, int]] = {}
        self.sink_counters = StepCounters(self.sink.name)
        self.in_flight = InFlight(self.options.max_in_flight)
        self.records_in = 0
        self.outcome: Outcome = "completed"
        self.error: BaseException | None = None
        self.report: RunReport | None = None
        self.finished = anyio.Event()
        self._stop_requested = anyio.Event()
        self._read_scope: asyncio.Timeout | None = None
        self._processing_scope: anyio.CancelScope | None = None
        self._guard_scope: anyio.CancelScope | None = None
        self._reserved = 0
        self._queues: dict[str, ChannelReceiver[Batch]] = {}
        self._registry: CollectorRegistry | None = None
        self.alerts: AlertEvaluator | None = None
        self._started_at = self.clock.monotonic()
        self.tracker: CompletionTracker
        self.checkpointer: Checkpointer

    # -- control ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: no new reads, drain in flight, final checkpoint."""
        if self._stop_requested.is_set():
            return
        if self.outcome == "completed":
            self.outcome = "stopped"
        self._stop_requested.set()
        if self._read_scope is not None:
            # Expire the read's scope now: the wait or read in progress is cancelled.
            self._read_scope.reschedule(asyncio.get_running_loop().time())

    def abort(self) -> None:
        """Stop at once without draining; done records are still checkpointed."""
        self.stop()
        self.outcome = "aborted"
        if self._processing_scope is not None:
            self._processing_scope.cancel()

    def statistics(self) -> RunStatistics:
        """One frozen snapshot of every counter, built without awaiting: a consistent cut.

        Observers (metrics, health, alerts, progress, the report) read only this.
        """
        now = self.clock.monotonic()
        lag = self._lag()
        checkpoint = self._checkpoint_statistics(now)
        steps = tuple(segment.counters.freeze() for segment in self.segments)
        return RunStatistics(
            records_in=self.records_in,
            records_out=self.sink_counters.records_out,
            in_flight=self.in_flight.in_flight - self._reserved,
            dropped=sum(step.dropped for step in steps),
            dead_lettered=self.router.dead_lettered,
            elapsed=now - self._started_at,
            checkpoints=checkpoint.saved,
            last_checkpoint_age=checkpoint.age,
            positions=self.tracker.positions(),
            open_breakers=tuple(sorted(self.events.open_since)),
            lag=None if lag is None else sum(lag.values()),
            at=now,
            outcome=None if self.report is None else self.report.outcome,
            steps=steps,
            sink=self.sink_counters.freeze(),
            source=SourceStatistics(
                name=self.source.name,
                records_in=self.records_in,
                outcomes=dict(self.source_outcomes),
                lag=lag,
            ),
            dead_letters=dict(self.router.counts),
            queue_depths=self.queue_depths(),
            checkpoint=checkpoint,
            policies=self.events.freeze(self.breakers, self.bulkheads),
        )

    def _lag(self) -> dict[str, int] | None:
        """Records behind each of the source's partition ends, if the source knows."""
        lag = getattr(self.source, "lag", None)
        return dict(lag()) if callable(lag) else None

    def _checkpoint_statistics(self, now: float) -> CheckpointStatistics:
        """The checkpointer's counts, its age measured at ``now``."""
        ck = self.checkpointer
        return CheckpointStatistics(
            saved=ck.saved,
            skipped=ck.skipped,
            failed=ck.failures,
            last_duration=ck.last_duration,
            age=None if ck.last_saved_at is None else now - ck.last_saved_at,
            epoch=ck.epoch,
        )

    async def drain(self, partitions: Collection[str], within: float) -> dict[str, int]:
        """Let ``partitions`` go: wait for their records in flight, checkpoint, stop tracking.

        Records still in flight after ``within`` seconds are abandoned: the checkpoint
        stays before them, so the partition's next owner reads them again.
        """
        names = set(partitions)
        tracker = self.tracker
        with anyio.move_on_after(within), self._sink_draining():
            while any(tracker.pending(name) for name in names):
                await self.in_flight.wait_change()
        await self.checkpointer.save(force=True)
        positions = {name: pos for name, pos in tracker.positions().items() if name in names}
        for name in names:
            tracker.forget(name)
        return positions

    def queue_depths(self) -> dict[str, int]:
        """Batches waiting in front of each step and the sink."""
        return {name: stream.buffered() for name, stream in self._queues.items()}

    @property
    def registry(self) -> CollectorRegistry:
        """The run's own Prometheus registry (created on first use)."""
        if self._registry is None:
            self._registry = create_registry(self.pipeline.name, self.statistics)
        return self._registry

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Claim the pipeline, restore its checkpoint and open the sink and source."""
        name = self.pipeline.name
        stateful = [s.step_id for s in self.pipeline.steps if isinstance(s, StageStep)]
        if stateful and not getattr(self.backend, "supports_state", True):
            raise ConfigError(
                "checkpoint",
                f"{type(self.backend).__name__} keeps only positions, but stages "
                f"{', '.join(stateful)} keep state; use SqliteCheckpoints or S3Checkpoints",
            )
        owner = self.options.owner or default_owner()
        claim = await self.backend.claim(name, owner)
        last = claim.checkpoint
        positions = dict(last.positions) if last else {}
        state = dict(last.state) if last else {}
        for segment in self.segments:
            if isinstance(segment, StageSegment) and segment.stage.step_id in state:
                segment.stage.restore(state[segment.stage.step_id])
        self.tracker = CompletionTracker(positions, self.in_flight, _noop)
        self.checkpointer = Checkpointer(
            pipeline=name,
            backend=self.backend,
            epoch=claim.epoch,
            owner=owner,
            tracker=self.tracker,
            state=self._state,
            crash_counts=dict(last.crash_counts) if last else {},
            clock=self.clock,
            on_saved=getattr(self.source, "committed", None),
        )
        self.quarantine = self._quarantined(self.checkpointer.crash_counts)
        for segment in self.segments:
            if isinstance(segment, StageSegment):
                await segment.open(self._stage_context(segment.stage.step_id))
        self._started_at = self.clock.monotonic()
        if self.options.alerts:
            self.alerts = AlertEvaluator(
                name,
                self.statistics,
                self.options.alerts,
                self.options.alert_sinks,
                interval=self.options.alert_interval,
                clock=self.clock,
            )
        if self.options.dead_letter is not None:
            await self.options.dead_letter.open()
        await self.sink.open()
        context = SourceContext(
            pipeline=name, positions=positions, drain=self.drain, count=self._count_source_outcome
        )
        await self.source.open(context)

    async def run(self) -> RunReport:
        """Process until the source ends or a stop; always end with a final checkpoint."""
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self.checkpointer.run_periodic, self.options.checkpoint_interval)
                if self.alerts is not None:
                    outer.start_soon(self.alerts.run_periodic)
                try:
                    await self._process()
                finally:
                    outer.cancel_scope.cancel()
        except BaseException as exc:
            self.error = _unwrap(exc)
            cancelled = isinstance(self.error, anyio.get_cancelled_exc_class())
            self.outcome = "aborted" if cancelled else "failed"
            self._count_crash(self.error)
        with anyio.CancelScope(shield=True):
            await self._finish()
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report

    async def aclose(self) -> None:
        """Close the source, the sink, step functions that hold resources, and the backend."""
        with anyio.CancelScope(shield=True):
            try:
                await self._close_step_functions()
                await self.source.aclose()
            finally:
                try:
                    await self.sink.aclose()
                finally:
                    try:
                        if self.options.dead_letter is not None:
                            await self.options.dead_letter.aclose()
                    finally:
                        if self.owns_backend:
                            await self.backend.aclose()

    async def _close_step_functions(self) -> None:
        """``aclose()`` every step function and fallback that has one (an HTTP client), once."""
        seen: set[int] = set()
        for step in self.pipeline.steps:
            if not isinstance(step, OpStep):
                continue
            for fn in (step.fn, step.fallback):
                close = getattr(fn, "aclose", None)
                if close is None or id(fn) in seen or not inspect.iscoroutinefunction(close):
                    continue
                seen.add(id(fn))
                await close()

    async def _process(self) -> None:
        # A leading fused segment runs inside the source task: a batch is processed
        # right after it is read (cache-hot), with one queue hop fewer.
        segments = self.segments
        head = segments[0] if segments and isinstance(segments[0], FusedSegment) else None
        if head is not None:
            segments = segments[1:]
        streams: list[tuple[ChannelSender[Batch], ChannelReceiver[Batch]]] = [
            channel(self.options.queue_size) for _ in range(len(segments) + 1)
        ]
        names = [s.counters.step_id for s in segments] + [self.sink.name]
        self._queues = {name: receive for name, (_, receive) in zip(names, streams, strict=True)}
        async with anyio.create_task_group() as tg:
            self._processing_scope = tg.cancel_scope
            tg.start_soon(self._drain_guard)
            tg.start_soon(self._source_loop, streams[0][0], head)
            for segment, (_, receive), (send, _) in zip(
                segments, streams[:-1], streams[1:], strict=True
            ):
                tg.start_soon(segment.run, receive, send)
            tg.start_soon(self._sink_loop, streams[-1][1])

    async def _drain_guard(self) -> None:
        with anyio.CancelScope() as scope:
            self._guard_scope = scope
            await self._stop_requested.wait()
            await anyio.sleep(self.options.drain_timeout)
            # Draining took too long: give up on what is still in flight.
            self.outcome = "aborted"
            if self._processing_scope is not None:
                self._processing_scope.cancel()

    async def _source_loop(self, send: ChannelSender[Batch], head: FusedSegment | None) -> None:
        tracker = self.tracker
        size = self.options.batch_size
        router = self.router
        async with send:
            while not self._stop_requested.is_set():
                # Only waiting for room and reading can be cancelled by stop(): a batch
                # once read always goes on, so every record read is accounted for.
                # asyncio's timeout scope is a third of the cost of an anyio cancel
                # scope, paid on every batch; the two nest correctly (3.11+).
                scope = asyncio.timeout(None)
                try:
                    async with scope:
                        self._read_scope = scope
                        if not router.paused.is_set():
                            await router.paused.wait()
                        batch = await self._read(size)
                except TimeoutError:
                    if not scope.expired():
                        raise  # the source's own TimeoutError
                    return
                finally:
                    self._read_scope = None
                if batch is None:
                    return
                n = len(batch.values)
                ack = tracker.ack_for(batch.partition, batch.start, batch.end, n, reserved=n)
                self.records_in += n
                if n == 0:
                    ack.release()
                    continue
                out = Batch(batch.values, ack, SourceOrigin(batch))
                if batch.partition in self.quarantine:
                    out = await self._quarantine(batch, out)
                    if not out.items:
                        ack.release()
                        continue
                processed = out if head is None else await head.process(out)
                if processed is not None:
                    await send.send(processed)
                # Hold nothing of this batch while reading the next: its memory is
                # freed as soon as the sink is done with it.
                del batch, out, processed

    async def _read(self, size: int) -> SourceBatch | None:
        """The next source batch with its in-flight slots taken; ``None`` at the end."""
        in_flight = self.in_flight
        await in_flight.acquire(size)
        self._reserved = size
        batch: SourceBatch | None = None
        try:
            batch = await self.source.read(size)
        finally:
            self._reserved = 0
            taken = len(batch.values) if batch is not None else 0
            if taken < size:
                in_flight.release(size - taken)
        return batch

    async def _sink_loop(self, receive: ChannelReceiver[Batch]) -> None:
        counters = self.sink_counters
        feed = self.sink_feed
        batches: AsyncIterable[Batch] = receive if feed is None else feed.over(receive)
        async with receive:
            async for batch in batches:
                counters.records_in += len(batch.items)
                started = time.perf_counter()
                with traced(self.tracing, self.sink.name, batch):
                    await self._write(batch)
                counters.timed(started)
                counters.records_out += len(batch.items)
                self.router.observe_written(len(batch.items))
                batch.ack.release()
                del batch  # not kept alive while waiting for the next one
        if self._guard_scope is not None:
            self._guard_scope.cancel()

    async def _write(self, batch: Batch) -> None:
        """Write a batch; on a ``DataError`` write its records one by one to find the bad ones."""
        try:
            await self._sink_write(batch)
        except DataError as error:
            if self.options.dead_letter is None or len(batch.items) == 1:
                self.router.handle(self.sink.name, batch, 0, batch.items[0], error)
                await self.router.flush()
                batch.items = []
                return
            kept: list[Any] = []
            for i, item in enumerate(batch.items):
                single = Batch([item], batch.ack, IndexOrigin(batch.origin, [i]))
                try:
                    await self._sink_write(single)
                    kept.append(item)
                except DataError as item_error:
                    self.router.handle(self.sink.name, batch, i, item, item_error)
                except Exception as item_error:
                    self._stop_for(batch, i, item_error)
            await self.router.flush()
            batch.items = kept
        except EngineError:
            raise
        except Exception as error:
            self._stop_for(batch, 0, error)

    def _stop_for(self, batch: Batch, index: int, error: Exception) -> NoReturn:
        partition, offset = batch.position(index)
        raise PipelineError(
            pipeline=self.pipeline.name,
            stage=self.sink.name,
            partition=partition,
            offset=offset,
            error=error,
        ) from error

    async def _quarantine(self, source: SourceBatch, batch: Batch) -> Batch:
        """Dead-letter records that crashed the run ``max_crashes`` times (``crash_loop``)."""
        crashes = self.quarantine[source.partition]
        kept: list[Any] = []
        marks: list[int] = []
        for i, value in enumerate(source.values):
            count = crashes.get(source.offset_of(i))
            if count is None:
                kept.append(value)
                continue
            marks.append(len(kept))
            error = PoisonPillError(
                f"record stopped pipeline {self.pipeline.name!r} {count} times; quarantined"
            )
            self.router.dead_letter_record(
                "source", batch.ack, source.record(i), error, "crash_loop", attempts=count
            )
        if not marks:
            return batch
        await self.router.flush()
        return Batch(kept, batch.ack, DropsOrigin(batch.origin, marks))

    def _quarantined(self, counts: Mapping[str, int]) -> dict[str, dict[int, int]]:
        """Records whose crash count reached ``max_crashes``, by partition and offset."""
        found: dict[str, dict[int, int]] = {}
        if self.options.dead_letter is None:
            return found
        for key, count in counts.items():
            partition, _, offset = key.rpartition("@")
            if count >= self.options.max_crashes and offset.lstrip("-").isdigit():
                found.setdefault(partition, {})[int(offset)] = count
        return found

    async def _finish(self) -> None:
        with anyio.move_on_after(FINAL_CHECKPOINT_TIMEOUT):
            try:
                await self.sink.flush()
            finally:
                await self.checkpointer.save(force=True)
        self.report = self._report()
        self.finished.set()

    # -- helpers ---------------------------------------------------------------

    def _stage_context(self, step_id: str) -> StageContext:
        router = self.router

        def dead_letter(
            batch: Batch, index: int, error: BaseException, reason: str | None = None
        ) -> None:
            router.dead_letter_item(step_id, batch, index, error, reason)

        counters = next(
            seg.counters
            for seg in self.segments
            if isinstance(seg, StageSegment) and seg.stage.step_id == step_id
        )

        def dropped(count: int) -> None:
            counters.dropped += count

        def absorbed(count: int) -> None:
            counters.absorbed += count
            router.observe_written(count)

        def source_exhausted() -> bool:
            return self.outcome == "completed" and self.error is None

        return StageContext(
            pipeline=self.pipeline.name,
            clock=self.clock,
            dead_letter=dead_letter,
            dropped=dropped,
            absorbed=absorbed,
            source_exhausted=source_exhausted,
            policy_hooks=(self.events, *self.options.policy_hooks),
            batch_size=self.options.batch_size,
            max_in_flight=self.options.max_in_flight,
        )

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for segment in self.segments:
            state.update(segment.snapshot())
        return state

    def _bind_sink(self) -> SinkFeed | None:
        """Give a sink that holds records back its context, and wake-ups (``bind``, ``wake_at``)."""
        bind = getattr(self.sink, "bind", None)
        if bind is not None:
            options = self.options
            bind(
                SinkContext(
                    pipeline=self.pipeline.name,
                    clock=self.clock,
                    batch_size=options.batch_size,
                    max_in_flight=options.max_in_flight,
                )
            )
        wake_at = getattr(self.sink, "wake_at", None)
        return None if wake_at is None else SinkFeed(wake_at, self.sink.flush, self.clock)

    def _sink_draining(self) -> AbstractContextManager[None]:
        """While partitions drain, a sink that holds records back writes them after each batch."""
        return nullcontext() if self.sink_feed is None else self.sink_feed.draining()

    def _count_source_outcome(self, outcome: str, count: int) -> None:
        """``SourceContext.count``: what the source reports besides records."""
        self.source_outcomes[outcome] = self.source_outcomes.get(outcome, 0) + count

    def _count_crash(self, error: BaseException) -> None:
        if isinstance(error, PipelineError) and error.partition is not None:
            key = f"{error.partition}@{error.offset}"
            counts = self.checkpointer.crash_counts
            counts[key] = counts.get(key, 0) + 1

    def _report(self) -> RunReport:
        return build_report(self.pipeline.name, self.outcome, self.statistics(), self.error)


def _noop() -> None:
    return None


def _unwrap(exc: BaseException) -> BaseException:
    """The one meaningful error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        cancelled = anyio.get_cancelled_exc_class()
        interesting = [e for e in exc.exceptions if not isinstance(e, cancelled)]
        if not interesting:
            return exc.exceptions[0]
        pipeline_errors = [e for e in interesting if isinstance(e, PipelineError)]
        exc = (pipeline_errors or interesting)[0]
    return exc


@final
class RunningPipeline:
    """Handle to a pipeline running inside :meth:`Pipeline.open`."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def name(self) -> str:
        """The pipeline's name."""
        return self._runtime.pipeline.name

    def stop(self) -> None:
        """Request a graceful stop (drain, flush, final checkpoint); returns at once."""
        self._runtime.stop()

    def abort(self) -> None:
        """Stop without draining; what is done is still checkpointed."""
        self._runtime.abort()

    def resume(self) -> None:
        """Resume reading after the DLQ-rate guard paused the run."""
        self._runtime.router.resume()

    async def checkpoint(self) -> None:
        """Write a checkpoint now (after any save already running)."""
        await self._runtime.checkpointer.save(force=True)

    def statistics(self) -> RunStatistics:
        """A frozen snapshot of the run's counters and positions right now."""
        return self._runtime.statistics()

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The run's own Prometheus registry (see ``riprap.serve_health``)."""
        return self._runtime.registry

    @property
    def error(self) -> BaseException | None:
        """What failed the run, once it has failed."""
        return self._runtime.error

    async def wait(self) -> RunReport:
        """Wait for the run to end and return its report.

        Raises:
            PipelineError: A stage failed (any error that ended the run is raised).
        """
        await self._runtime.finished.wait()
        error = self._runtime.error
        if error is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
            raise error
        assert self._runtime.report is not None
        return self._runtime.report


@asynccontextmanager
async def open_pipeline(pipeline: Plan) -> AsyncIterator[RunningPipeline]:
    """Run ``pipeline`` in the background of the block; leaving it stops the run gracefully.

    A failing run does not cancel the block (it may be a web server's main
    task): :meth:`RunningPipeline.wait` raises the error, and so does leaving
    the block.
    """
    runtime = Runtime(pipeline)
    cancelled = anyio.get_cancelled_exc_class()
    try:
        await runtime.start()
        async with anyio.create_task_group() as tg:

            async def supervise() -> None:
                try:
                    await runtime.run()
                except cancelled:
                    raise
                except BaseException:  # kept in runtime.error; raised by wait() and on exit
                    return

            tg.start_soon(supervise)
            body_error: Exception | None = None
            try:
                yield RunningPipeline(runtime)
            except Exception as exc:
                # Re-raised below, outside the task group, so callers see it unwrapped.
                body_error = exc
            finally:
                runtime.stop()
        if body_error is not None:
            raise body_error
        if runtime.error is not None and not isinstance(runtime.error, cancelled):
            raise runtime.error
    finally:
        await runtime.aclose()
