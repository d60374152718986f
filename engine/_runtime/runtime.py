"""The runtime: one task per stage between bounded channels, plus the checkpointer.

Lifecycle of a run: claim the pipeline in the checkpoint backend (fencing),
restore positions and operator state, open the sink and the source, then
source -> segments -> sink until the source ends or a stop is requested.
A stop cancels only the source's read; records in flight drain within
``drain_timeout``; the sink is flushed and a final checkpoint written. A bug
in a stage cancels the run, still writes the final checkpoint (it covers only
done records) with the crash counted, and raises :class:`~riprap.PipelineError`.
An abort may come at any moment: during start-up it cancels the start (nothing
is read), while records move it cancels every task, during the final flush it
cancels the flush; the final checkpoint is always written (once the claim is
made), and once the report exists an abort changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import secrets
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio

from riprap._core.clock import SYSTEM_CLOCK, Clock
from riprap._core.errors import ConfigError, DataError, PipelineError
from riprap._core.options import DEFAULT_OFFLOAD_THREADS
from riprap._core.protocols import Sink, Source, SourceContext, StageContext
from riprap._core.records import Batch, DropsOrigin, SourceBatch, SourceOrigin
from riprap._core.steps import BatchStep, OpStep, Plan, StageStep, Step, is_async
from riprap._runtime.acks import CompletionTracker, InFlight
from riprap._runtime.allocator import keep_freed_memory
from riprap._runtime.async_segment import AsyncSegment
from riprap._runtime.changelog import ChangelogHub
from riprap._runtime.channel import ChannelReceiver, ChannelSender, channel
from riprap._runtime.fan_out import Branches, BranchRunner
from riprap._runtime.fuse import refusing_awaitables
from riprap._runtime.gc_threshold import hold_gc_threshold
from riprap._runtime.keyed_state import keeps_keyed_state
from riprap._runtime.loop_lag import LoopLagMonitor, LoopWatch
from riprap._runtime.merged_source import MergedSource
from riprap._runtime.offload import ThreadOffload
from riprap._runtime.outcome_labels import OutcomeLabels
from riprap._runtime.read_stop import ReadStop
from riprap._runtime.route import RouteRunner
from riprap._runtime.routing import Router
from riprap._runtime.segments import (
    BatchSegment,
    ErrorRouter,
    FusedSegment,
    FusedSend,
    Segment,
    Send,
    StageSegment,
)
from riprap._runtime.shared_send import SharedSend
from riprap._runtime.sink_runner import SinkRunner, draining_all, stack_clock
from riprap._runtime.step_stats import entry_step_id, segment_step_stats
from riprap._runtime.worker_names import pipeline_name
from riprap.checkpoints._checkpointer import Checkpointer
from riprap.checkpoints._guard import (
    CrashGuard,
    CrashWatch,
    crash_key,
    crash_record,
    poison_pill,
)
from riprap.deadletters._stores import deleted_letters
from riprap.observability._alerts import AlertEvaluator
from riprap.observability._metrics import create_registry
from riprap.observability._report import PolicyCounters, RunReport, StepCounters, build_report
from riprap.observability._runlog import LoggedDeadLetters, RunLog
from riprap.observability._statistics import (
    CheckpointStatistics,
    LoopStatistics,
    Outcome,
    RunStatistics,
    SourceStatistics,
    StepStats,
    lag_seconds,
)
from riprap.observability._tracing import Tracing
from riprap.policies import Bulkhead, CircuitBreaker, PolicyHook, PolicyStack, Shelter
from riprap.policies._classify import DEFAULT_CLASSIFIER

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Mapping,
        Sequence,
    )

    from prometheus_client import CollectorRegistry

    from riprap.checkpoints._snapshot import Checkpoint, CheckpointBackend

log = logging.getLogger("riprap.runtime")

FINAL_CHECKPOINT_TIMEOUT = 30.0
"""Seconds the final checkpoint may take before the run gives up on it."""

READ_BOUND_FACTOR = 100
"""A run reads at most this many ``max_in_flight`` of records past its last saved
frontier before it saves again: what a run after a crash must watch is bounded."""


def default_owner() -> str:
    """A checkpoint owner id unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def build_segments(
    steps: Sequence[Step],
    router: ErrorRouter,
    *,
    clock: Clock = SYSTEM_CLOCK,
    hooks: Sequence[PolicyHook] = (),
    threads: ThreadOffload | None = None,
    watch: LoopWatch | None = None,
    shelter: Shelter | None = None,
    part_outputs: int = 1_000,
    in_flight: InFlight | None = None,
) -> list[Segment]:
    """Group consecutive fusable steps into fused loops; everything else runs on its own.

    Offloaded steps run in ``threads``; sync steps on the loop report to ``watch``
    how long they held it; policy stacks leave abandoned calls to ``shelter``;
    an expanding chain sends about ``part_outputs`` outputs at a time; batch
    steps let a partial group go when the source waits for room in ``in_flight``.
    """
    segments: list[Segment] = []
    run: list[OpStep] = []
    for step in steps:
        if isinstance(step, OpStep) and step.fusable:
            run.append(step)
            continue
        if run:
            segments.append(FusedSegment(run, router, watch, part_outputs=part_outputs))
            run = []
        if isinstance(step, OpStep):
            counters = StepCounters(step.step_id)
            threads = threads or ThreadOffload(DEFAULT_OFFLOAD_THREADS)
            call = _base_call(_refusing_awaitables(step), counters, threads, watch)
            segments.append(
                AsyncSegment(
                    step,
                    router,
                    _step_call(step, call, clock, hooks, shelter),
                    counters,
                    part_outputs=part_outputs,
                )
            )
        elif isinstance(step, BatchStep):
            segments.append(BatchSegment(step, in_flight))
        elif isinstance(step, StageStep):
            segments.append(StageSegment(step, router))
    if run:
        segments.append(FusedSegment(run, router, watch, part_outputs=part_outputs))
    return segments


def _refusing_awaitables(step: OpStep) -> OpStep:
    """A sync step whose function's results are checked: an awaitable stops the run."""
    if step.is_async:
        return step
    return replace(step, fn=refusing_awaitables(step.fn, step.kind, step.step_id))


def _base_call(
    step: OpStep, counters: StepCounters, threads: ThreadOffload, watch: LoopWatch | None
) -> Callable[[Any], Awaitable[Any]]:
    """The step's function as an async callable: in a thread, on the loop (timed) or as is."""
    if step.offload is not None:
        return threads.caller(step.kind, step.fn, counters)
    if step.is_async or watch is None:
        return _as_async(step.fn, step.is_async)
    fn, step_id, clock = step.fn, step.step_id, time.perf_counter

    async def timed(value: Any) -> Any:
        started = clock()
        try:
            return fn(value)
        finally:
            watch.held(step_id, clock() - started)

    return timed


def _step_call(
    step: OpStep,
    call: Callable[[Any], Awaitable[Any]],
    clock: Clock,
    hooks: Sequence[PolicyHook],
    shelter: Shelter | None = None,
) -> Callable[[Any], Awaitable[Any]]:
    """``call`` (the step's function) behind the step's policy stack."""
    if step.policies is None and step.fallback is None:
        return call
    stack = PolicyStack(
        step.policies,
        stage=step.step_id,
        clock=stack_clock(step.policies, clock),
        hooks=hooks,
        shelter=shelter,
    )
    fallback = step.fallback
    if fallback is None:
        return stack.wrap(call)
    degrade = _as_async(fallback, is_async(fallback), arity=2)
    return stack.wrap(call, fallback=degrade)


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
    for step in pipeline.all_steps():
        if isinstance(step, OpStep):
            fn = getattr(step.fn, "__qualname__", type(step.fn).__qualname__)
            parts.append(f"{step.kind}:{step.step_id}:{fn}:{step.concurrency}:{step.on_error}")
        else:
            parts.append(f"{type(step).__name__}:{step.step_id}")
    if pipeline.route is not None:
        parts.append(f"route:{pipeline.route.step_id}")
    parts += [f"branch:{branch.name}:{branch.sink.name}" for branch in pipeline.branches]
    parts += [f"side:{side.name}:{side.sink.name}" for side in pipeline.side_outputs]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def distinct_policies(pipeline: Plan) -> tuple[tuple[CircuitBreaker, ...], tuple[Bulkhead, ...]]:
    """Every distinct breaker and bulkhead of the pipeline's steps and sinks, in pipeline order."""
    stacks = [s.policies for s in pipeline.all_steps() if isinstance(s, OpStep) and s.policies]
    stacks += [policies for _, policies in pipeline.outputs() if policies is not None]
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
        # What the source loops read: each source of a merge in a task of its own.
        source = pipeline.source
        self.feeds: tuple[Source, ...] = (
            source.members if isinstance(source, MergedSource) else (source,)
        )
        self.clock = self.options.clock
        self.owns_backend = self.options.checkpoint is None
        self.backend = self.options.checkpoint or _default_backend(self.options.checkpoint_path)
        self.upstreams = () if pipeline.upstream is None else (Runtime(pipeline.upstream),)
        """The pipeline before a through(): it runs, stops and fails with this one."""
        self._upstreams_started: list[Runtime] = []
        changelog = self.options.changelog
        # Workers of one pipeline share its changelog: a partition's state follows it among them.
        shared = pipeline_name(pipeline.name)
        self.state_log = None if changelog is None else ChangelogHub(changelog, shared)
        self._logged_steps = frozenset(
            ()
            if changelog is None
            else (
                s.step_id
                for s in pipeline.all_steps()
                if isinstance(s, StageStep) and keeps_keyed_state(s.stage)
            )
        )
        """Keyed-state steps whose state the changelog holds: not the checkpoint's to save."""
        self.run_log = RunLog(pipeline.name, self.options.redactor, self.clock)
        dead_letter = self.options.dead_letter
        self.router = Router(
            pipeline=pipeline.name,
            source=self.source.name,
            dead_letter=None
            if dead_letter is None
            else LoggedDeadLetters(dead_letter, self.run_log),
            redactor=self.options.redactor,
            classifier=DEFAULT_CLASSIFIER,
            clock=self.clock,
            config_hash=config_hash(pipeline),
            on_error={s.step_id: s.on_error for s in pipeline.all_steps() if isinstance(s, OpStep)},
            guard=self.options.dlq_guard,
        )
        self.events = PolicyCounters()
        self.breakers, self.bulkheads = distinct_policies(pipeline)
        hooks: tuple[PolicyHook, ...] = (self.events, self.run_log, *self.options.policy_hooks)
        threshold = self.options.loop_lag_threshold
        watch = None if threshold is None else LoopWatch()
        # Owns the calls abandoned by attempt timeouts, for the whole run.
        self.shelter = Shelter()
        threads = ThreadOffload(self.options.offload_threads)  # one pool for every branch
        self.in_flight = InFlight(self.options.max_in_flight, self.options.max_in_flight_bytes)

        def segments_of(steps: Sequence[Step]) -> list[Segment]:
            return build_segments(
                steps,
                self.router,
                clock=self.clock,
                hooks=hooks,
                threads=threads,
                watch=watch,
                shelter=self.shelter,
                part_outputs=self.options.batch_size,
                in_flight=self.in_flight,
            )

        self.segments = segments_of(pipeline.steps)
        tracing = self.options.tracing
        provider = None if tracing is True else tracing
        self.tracing = Tracing(pipeline.name, provider) if tracing else None
        # One runner per sink: the pipeline's one sink, or each branch's.
        self.sinks = tuple(
            SinkRunner(
                sink,
                policies,
                pipeline=pipeline.name,
                options=self.options,
                router=self.router,
                hooks=hooks,
                context_hooks=(self.events, *self.options.policy_hooks),
                shelter=self.shelter,
                tracing=self.tracing,
                sinks=len(pipeline.outputs()),
                in_flight=self.in_flight,
            )
            for sink, policies in pipeline.outputs()
        )
        self.sink: Sink = self.sinks[0].sink
        # No branches with one sink (zip stops at once), one per sink otherwise.
        self.branches = tuple(
            BranchRunner(branch.name, segments_of(branch.steps), runner)
            for branch, runner in zip(pipeline.branches, self.sinks, strict=False)
        )
        # The side outputs' sinks come last (Plan.outputs).
        side_runners = self.sinks[len(self.sinks) - len(pipeline.side_outputs) :]
        self.side_branches = tuple(
            BranchRunner(side.name, segments_of(side.steps), runner)
            for side, runner in zip(pipeline.side_outputs, side_runners, strict=True)
        )
        self._side_sends: dict[str, SharedSend] = {}
        route = pipeline.route
        branch_names = [branch.name for branch in pipeline.branches]
        self.route = None if route is None else RouteRunner(route, branch_names, self.router)
        for segment in self.all_segments():
            segment.tracer = self.tracing
        self.source_outcomes: dict[str, int] = {}
        self.outcome_labels = OutcomeLabels(pipeline.name, self.source.name)
        self.quarantine: dict[str, dict[int, int]] = {}
        self.loop_monitor = (
            None
            if watch is None or threshold is None
            else LoopLagMonitor(pipeline.name, watch, self._busy, threshold=threshold)
        )
        self.records_in = 0
        self._read_times: dict[str, float] = {}  # event time of the last record read
        self.outcome: Outcome = "completed"
        self.error: BaseException | None = None
        self.report: RunReport | None = None
        self.finished = anyio.Event()
        self._stop_requested = anyio.Event()
        self._read_stops: list[ReadStop] = []
        self._isolation = anyio.Lock()  # an isolated chunk moves alone (see _isolate)
        self._sink_groups_left = 0
        self._processing_scope: anyio.CancelScope | None = None
        self._start_scope: anyio.CancelScope | None = None
        self._release_gc: Callable[[], None] = _noop
        """Puts back the collector's threshold that :meth:`start` raised (once)."""
        self._flush_scope: anyio.CancelScope | None = None
        self._aborted = False
        self._opened = False
        self._guard_scope: anyio.CancelScope | None = None
        self._reserved = 0
        self._inputs_ended = 0
        """Source loops that reached the end of their input (not a stop, not an error)."""
        self._source_open = False
        self._queues: dict[str, ChannelReceiver[Batch]] = {}
        self._registry: CollectorRegistry | None = None
        self.alerts: AlertEvaluator | None = None
        self._started_at = self.clock.monotonic()
        self._watch: CrashWatch | None = None
        """After an unclean end: the batches whose frontier is saved before they move."""
        # Until the claim restores the real positions: an empty tracker, so that a
        # run aborted during start-up still has statistics and a report.
        self.tracker = CompletionTracker({}, self.in_flight, _noop)
        self.checkpointer: Checkpointer

    # -- control ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: no new reads, drain in flight, final checkpoint."""
        if self._stop_requested.is_set() or self.finished.is_set():
            return
        if self.outcome == "completed":
            self.outcome = "stopped"
        self._stop_requested.set()
        for read_stop in self._read_stops:
            read_stop.request()  # the wait or read in progress is cancelled

    def abort(self) -> None:
        """Stop at once without draining; done records are still checkpointed.

        Whatever the run is doing is cancelled: its start-up, its tasks, or its
        final flush, but never the final checkpoint. Once the run has ended
        (its report exists) it changes nothing.
        """
        if self.finished.is_set():
            return
        for upstream in self.upstreams:
            upstream.abort()
        self.stop()
        if self.outcome != "failed":
            self.outcome = "aborted"
        self._aborted = True
        self.shelter.close()  # no grace for calls that ignore the cancellation
        for scope in (self._start_scope, self._processing_scope, self._flush_scope):
            if scope is not None:
                scope.cancel()

    def statistics(self) -> RunStatistics:
        """One frozen snapshot of every counter, built without awaiting: a consistent cut.

        Observers (metrics, health, alerts, progress, the report) read only this.
        """
        now = self.clock.monotonic()
        lag = self._lag()
        checkpoint = self._checkpoint_statistics(now)
        steps = tuple(stats for segment in self.segments for stats in segment_step_stats(segment))
        steps += self._branch_statistics()
        return RunStatistics(
            records_in=self.records_in,
            records_out=sum(runner.counters.records_out for runner in self.sinks),
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
            sink=self.sinks[0].counters.freeze(),
            sinks=tuple(runner.counters.freeze() for runner in self.sinks)
            if len(self.sinks) > 1
            else (),
            source=SourceStatistics(
                name=self.source.name,
                records_in=self.records_in,
                outcomes=dict(self.source_outcomes),
                lag=lag,
                lag_seconds=lag_seconds(self._read_times, lag, self.clock.time()),
                end_to_end=self.tracker.latency.freeze(),
            ),
            dead_letters=dict(self.router.counts),
            queue_depths=self.queue_depths(),
            checkpoint=checkpoint,
            policies=self.events.freeze(self.breakers, self.bulkheads),
            dead_letters_deleted=deleted_letters(self.options.dead_letter),
            loop=self._loop_statistics(),
        )

    def _loop_statistics(self) -> LoopStatistics:
        monitor = self.loop_monitor
        if monitor is None:
            return LoopStatistics()
        return LoopStatistics(
            last_lag=monitor.last_lag, max_lag=monitor.max_lag, stalls=dict(monitor.stalls)
        )

    def _busy(self) -> dict[str, float]:
        """Seconds each step and the sink have spent on batches (the lag monitor's hint)."""
        busy = {s.counters.step_id: s.counters.busy_seconds for s in self.all_segments()}
        busy.update({r.sink.name: r.counters.busy_seconds for r in self.sinks})
        if self.route is not None:
            busy[self.route.step.step_id] = self.route.counters.busy_seconds
        return busy

    def _lag(self) -> dict[str, int] | None:
        """Records behind each of the source's partition ends, if the source knows."""
        lag = getattr(self.source, "lag", None)
        known = lag() if callable(lag) else None
        return None if known is None else dict(known)

    def _checkpoint_statistics(self, now: float) -> CheckpointStatistics:
        """The checkpointer's counts, its age measured at ``now``."""
        if not self._claimed():
            return CheckpointStatistics()
        ck = self.checkpointer
        return CheckpointStatistics(
            saved=ck.saved,
            skipped=ck.skipped,
            failed=ck.failures,
            last_duration=ck.last_duration,
            age=None if ck.last_saved_at is None else now - ck.last_saved_at,
            epoch=ck.epoch,
            last_interval=ck.last_interval,
            late=ck.late,
        )

    async def drain(self, partitions: Collection[str], within: float) -> dict[str, int]:
        """Let ``partitions`` go: wait for their records in flight, checkpoint, stop tracking.

        Records still in flight after ``within`` seconds are abandoned: the checkpoint
        stays before them, so the partition's next owner reads them again.
        """
        names = set(partitions)
        tracker = self.tracker
        with anyio.move_on_after(within), draining_all(self.sinks):
            while any(tracker.pending(name) for name in names):
                await self.in_flight.wait_change()
        try:
            await self.checkpointer.save(force=True)
            positions = {name: pos for name, pos in tracker.positions().items() if name in names}
        finally:
            # Even if the save fails (a fenced member): the partitions are given up,
            # and their next start comes from the group, not from this tracker.
            for name in names:
                tracker.forget(name)
            if self.state_log is not None:
                self.state_log.release(names)
        return positions

    def queue_depths(self) -> dict[str, int]:
        """Batches waiting in front of each step and the sink."""
        return {name: stream.buffered() for name, stream in self._queues.items()}

    @property
    def registry(self) -> CollectorRegistry:
        """The run's own Prometheus registry (created on first use)."""
        if self._registry is None:
            upstream = [(u.pipeline.name, u.statistics) for u in self.upstreams]
            self._registry = create_registry(self.pipeline.name, self.statistics, upstream)
        return self._registry

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Claim the pipeline, restore its checkpoint and open the sink and source.

        An abort meanwhile cancels the start-up; :meth:`run` then ends at once.
        """
        if self.options.malloc_trim_threshold is not None:
            keep_freed_memory(self.options.malloc_trim_threshold)
        if self.options.gc_threshold is not None and self._release_gc is _noop:
            self._release_gc = hold_gc_threshold(self.options.gc_threshold)
        with anyio.CancelScope() as scope:
            self._start_scope = scope
            if self._aborted:
                scope.cancel()
            try:
                await self._open()
                for upstream in self.upstreams:  # the pipeline before a through(), if any
                    self._upstreams_started.append(upstream)
                    await upstream.start()
                self._opened = True
            finally:
                self._start_scope = None

    def _claimed(self) -> bool:
        """Whether start-up got as far as the claim (there is a checkpointer)."""
        return "checkpointer" in vars(self)

    async def _open(self) -> None:
        """:meth:`start`'s work: claim, restore, open stages, dead letters, sink and source."""
        name = self.pipeline.name
        stateful = [
            s.step_id
            for s in self.pipeline.all_steps()
            if isinstance(s, StageStep) and s.step_id not in self._logged_steps
        ]
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
        for segment in self.all_segments():
            if isinstance(segment, StageSegment) and segment.stage.step_id in state:
                segment.stage.restore(state[segment.stage.step_id])
        self.tracker = CompletionTracker(positions, self.in_flight, _noop)
        crash_counts = dict(last.crash_counts) if last else {}
        identities = getattr(self.source, "identities", None)
        if not callable(identities) or not getattr(self.backend, "supports_state", True):
            identities = None  # positions only: the source checks nothing
        else:
            identities = self._identities_of(identities, dict(last.identities) if last else {})
        self.checkpointer = Checkpointer(
            pipeline=name,
            backend=self.backend,
            epoch=claim.epoch,
            owner=owner,
            tracker=self.tracker,
            state=self._state,
            crash_counts=crash_counts,
            clock=self.clock,
            on_saved=getattr(self.source, "committed", None),
            guard=self._guard_after(last, crash_counts),
            previous=last,
            redact=self.options.redactor.redact,
            before_save=None if self.state_log is None else self.state_log.commit,
            identities=identities,
        )
        self.quarantine = self._quarantined(self.checkpointer.crash_counts)
        # Before any record moves, so that a run dying from here on is seen as a crash.
        # Not fatal if the store refuses (logged, retried by the periodic save): a
        # missed mark costs crash detection one crash, never a record.
        await self.checkpointer.tick()
        if self.state_log is not None:
            await self.state_log.open()
        for segment in self.all_segments():
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
        for runner in self.sinks:
            await runner.sink.open()
        context = SourceContext(
            pipeline=name,
            positions=positions,
            drain=self.drain,
            count=self._count_source_outcome,
            policy_hooks=(self.events, *self.options.policy_hooks),
            clock=self.clock,
            max_batch_bytes=self.options.max_batch_bytes,
            identities=dict(last.identities) if last and identities is not None else {},
            **({} if self.state_log is None else {"assigned": self.state_log.assigned}),
        )
        await self.source.open(context)
        self._source_open = True

    def _identities_of(
        self,
        source: Callable[[Mapping[str, int]], Mapping[str, str]],
        saved: Mapping[str, str],
    ) -> Callable[[Mapping[str, int]], Mapping[str, str]]:
        """What each position counts in for a cut: the source's, once it is open and has them.

        Until then (the checkpoint marking the start, a start-up that fails) the
        ones the run resumed from are saved again, so none is ever lost.
        """

        def identities(positions: Mapping[str, int]) -> Mapping[str, str]:
            return source(positions) if self._source_open else saved

        return identities

    async def run(self) -> RunReport:
        """Process until the source ends or a stop; always end with a final checkpoint.

        After an abort during start-up nothing is read: the run ends at once.
        """
        try:
            if self._opened:
                self.run_log.started(self.checkpointer.epoch, self.tracker.positions())
                async with anyio.create_task_group() as outer:
                    outer.start_soon(
                        self.checkpointer.run_periodic, self.options.checkpoint_interval
                    )
                    if self.alerts is not None:
                        outer.start_soon(self.alerts.run_periodic)
                    if self.loop_monitor is not None:
                        outer.start_soon(self.loop_monitor.run)
                    ended = [anyio.Event() for _ in self._upstreams_started]
                    for upstream, done in zip(self._upstreams_started, ended, strict=True):
                        outer.start_soon(_run_upstream, upstream, done)
                    try:
                        await self._process()
                        for upstream in self._upstreams_started:
                            upstream.stop()  # it drains and checkpoints, then ends
                        for done in ended:
                            await done.wait()
                    finally:
                        outer.cancel_scope.cancel()
        except BaseException as exc:
            self.error = _unwrap(exc)
            cancelled = isinstance(self.error, anyio.get_cancelled_exc_class())
            self.outcome = "aborted" if cancelled else "failed"
            self._count_crash(self.error)
        with anyio.CancelScope(shield=True):
            await self._finish()
        assert self.report is not None
        self.run_log.ended(self.report, self.error)
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report

    async def aclose(self) -> None:
        """Close the source, the sink, step functions that hold resources, and the backend."""
        with anyio.CancelScope(shield=True):
            try:
                self._release_gc()
                for upstream in reversed(self._upstreams_started):
                    await upstream.aclose()
                await self._close_step_functions()
                await self.source.aclose()
            finally:
                try:
                    await _close_sinks([runner.sink for runner in self.sinks])
                finally:
                    try:
                        if self.options.dead_letter is not None:
                            await self.options.dead_letter.aclose()
                    finally:
                        try:
                            if self.state_log is not None:
                                await self.state_log.aclose()
                        finally:
                            if self.owns_backend:
                                await self.backend.aclose()

    async def _close_step_functions(self) -> None:
        """``aclose()`` every step function and fallback that has one (an HTTP client), once."""
        seen: set[int] = set()
        for step in self.pipeline.all_steps():
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
        # right after it is read (cache-hot), with one queue hop fewer. The sources
        # of a merge share the first queue instead, each in a task of its own.
        segments = self.segments
        alone = len(self.feeds) == 1
        fused = bool(segments) and isinstance(segments[0], FusedSegment)
        head = segments[0] if alone and fused else None
        assert head is None or isinstance(head, FusedSegment)
        if head is not None:
            segments = segments[1:]
        # A fused segment after another runner runs in that runner's task, too.
        tails: list[FusedSegment | None] = []
        runners: list[Segment] = []
        for segment in segments:
            if isinstance(segment, FusedSegment) and runners and tails[-1] is None:
                tails[-1] = segment
                continue
            runners.append(segment)
            tails.append(None)
        segments = runners
        # Branches (a fan-out or route) are fed by their fork, which the last
        # runner before them sends into: no channel of its own.
        queue = self.options.queue_batches
        branches = Branches(self.branches, queue, self.route) if self.branches else None
        count = len(segments) + (1 if branches is None else 0)
        streams: list[tuple[ChannelSender[Batch], ChannelReceiver[Batch]]] = [
            channel(queue) for _ in range(count)
        ]
        sends: list[Send] = [send for send, _ in streams]
        receives: list[ChannelReceiver[Batch]] = [receive for _, receive in streams]
        names = [entry_step_id(s) for s in segments]
        if branches is None:
            names.append(self.sink.name)
        else:
            sends.append(branches.fork)
        for i, tail in enumerate(tails):
            if tail is not None:
                sends[i + 1] = FusedSend(tail, sends[i + 1])
        self._queues = dict(zip(names, receives, strict=True))
        if branches is not None:
            self._queues.update(branches.queues)
        sides = self._side_outputs()
        self._sink_groups_left = 1 + (sides is not None)
        first: Send = sends[0] if alone else SharedSend(sends[0], len(self.feeds))
        async with anyio.create_task_group() as tg:
            self._processing_scope = tg.cancel_scope
            if self._aborted:  # between start-up and now: read nothing
                tg.cancel_scope.cancel()
            tg.start_soon(self._drain_guard)
            for feed in self.feeds:
                tg.start_soon(self._source_loop, feed, first, head)
            for segment, receive, send in zip(
                segments, receives[: len(segments)], sends[1:], strict=True
            ):
                tg.start_soon(segment.run, receive, send)
            if branches is None:
                tg.start_soon(self._sink_loop, receives[-1])
            else:
                branches.start(tg, self._sinks_ended)
            if sides is not None:
                sides.start(tg, self._sinks_ended)

    def _side_outputs(self) -> Branches | None:
        """The side outputs' branches, each stage that emits to one holding a share of it."""
        if not self.side_branches:
            return None
        sides = Branches(self.side_branches, self.options.queue_batches, None)
        self._queues.update(sides.queues)
        stages = [seg for seg in self.all_segments() if isinstance(seg, StageSegment)]
        for branch, entry in zip(self.side_branches, sides.entries, strict=True):
            emitters = [s for s in stages if branch.name in getattr(s.stage, "side_outputs", ())]
            shared = SharedSend(entry, len(emitters))
            self._side_sends[branch.name] = shared
            for segment in emitters:
                segment.side = (*segment.side, shared)
        return sides

    async def _drain_guard(self) -> None:
        with anyio.CancelScope() as scope:
            self._guard_scope = scope
            await self._stop_requested.wait()
            await anyio.sleep(self.options.drain_timeout)
            # Draining took too long: give up on what is still in flight. Still a
            # graceful stop (aborted is for abort()); the records left are counted
            # and read again by the next run (the checkpoint stays before them).
            left = self.in_flight.in_flight - self._reserved
            if left:
                self._count_source_outcome("drain_abandoned", left)
            log.warning("drain timed out: %d records left for the next run", left)
            # Calls that ignore the cancellation are abandoned at once, not after
            # their grace: the stop ends now (they are counted and logged).
            self.shelter.close()
            if self._processing_scope is not None:
                self._processing_scope.cancel()

    async def _source_loop(self, source: Source, send: Send, head: FusedSegment | None) -> None:
        router = self.router
        checkpointer = self.checkpointer
        size = self.options.batch_size
        if len(self.feeds) > 1:
            # The sources of a merge each read at most their share of the in-flight
            # bound, so that one waiting for records never holds up the others' reads.
            size = min(size, max(1, self.in_flight.capacity // len(self.feeds)))
        # After an unclean end, the read frontier is made durable before the records
        # the dead run may have read move, so that a crash's suspect range is known
        # (CrashGuard); every run saves before reading past its bound.
        watch = self._watch
        read_stop = ReadStop()
        self._read_stops.append(read_stop)
        async with send:
            while not self._stop_requested.is_set():
                # Only waiting for room and reading can be cancelled by stop(): a batch
                # once read always goes on, so every record read is accounted for.
                read_stop.enter()
                try:
                    if not router.paused.is_set():
                        await router.paused.wait()
                    batch = await self._read(source, size)
                except asyncio.CancelledError:
                    if read_stop.caught():
                        return
                    raise
                finally:
                    read_stop.leave()
                if batch is None:
                    self._inputs_ended += 1
                    return
                if self._isolation.locked():  # another source's isolated chunk moves alone
                    async with self._isolation:
                        pass
                n = len(batch.values)
                if checkpointer.note_read(batch.partition, batch.end, n):
                    await checkpointer.save_bound()
                elif watch is not None and watch.covers(batch.partition, batch.start, n):
                    await checkpointer.save()
                if batch.partition in checkpointer.guard.isolating:
                    await self._isolate(batch, send, head)
                else:
                    await self._forward(batch, send, head)
                # Hold nothing of this batch while reading the next: its memory is
                # freed as soon as the sink is done with it.
                del batch

    async def _forward(self, batch: SourceBatch, send: Send, head: FusedSegment | None) -> None:
        """Hand a source batch on: its ack, quarantined records out, the leading fused steps."""
        n = len(batch.values)
        ack = self.tracker.ack_for(
            batch.partition, batch.start, batch.end, n, reserved=n, nbytes=batch.nbytes
        )
        self.records_in += n
        if n == 0:
            ack.release()
            return
        stamps = batch.timestamps
        if stamps and stamps[-1] is not None:
            self._read_times[batch.partition] = stamps[-1]
        out = Batch(batch.values, ack, SourceOrigin(batch))
        if batch.partition in self.quarantine:
            out = await self._quarantine(batch, out)
            if not out.items:
                ack.release()
                return
        if batch.errors:
            out = await self._reject(batch, out)
            if not out.items:
                ack.release()
                return
        if head is None:
            await send.send(out)
        else:
            await head.pass_on(out, send)

    async def _isolate(self, batch: SourceBatch, send: Send, head: FusedSegment | None) -> None:
        """Process a batch of an isolated partition chunk by chunk, alone, behind durable marks.

        Before a chunk moves, everything else in flight must be done and the
        chunk is named in the checkpoint (``in_progress``); it must be done before
        anything else moves. A death is then known to lie in that chunk.
        """
        async with self._isolation:
            await self._isolate_chunks(batch, send, head)

    async def _isolate_chunks(
        self, batch: SourceBatch, send: Send, head: FusedSegment | None
    ) -> None:
        checkpointer = self.checkpointer
        end, chunk = checkpointer.guard.isolating[batch.partition]
        with draining_all(self.sinks):
            for part in _chunks(batch, chunk if batch.start < end else len(batch.values)):
                await self._wait_all_done()
                guard = checkpointer.guard
                suspect = part.start < end
                mark = (part.partition, part.start, part.end) if suspect else None
                checkpointer.guard = replace(guard, in_progress=mark)
                await checkpointer.save(force=True)
                await self._forward(part, send, head)
                await self._wait_all_done()
        guard = checkpointer.guard.pruned(self.tracker.positions())
        checkpointer.guard = replace(guard, in_progress=None)
        if batch.partition not in guard.isolating:
            log.info(
                "pipeline %s: partition %s is past the records isolated after repeated crashes",
                self.pipeline.name,
                batch.partition,
                extra={"pipeline": self.pipeline.name},
            )
            await checkpointer.save(force=True)

    async def _wait_all_done(self) -> None:
        tracker = self.tracker
        while tracker.any_pending():
            await self.in_flight.wait_change()

    async def _read(self, source: Source, size: int) -> SourceBatch | None:
        """The next batch of ``source`` with its in-flight slots taken; ``None`` at its end."""
        in_flight = self.in_flight
        await in_flight.acquire(size)
        self._reserved += size
        batch: SourceBatch | None = None
        try:
            batch = await source.read(size)
        finally:
            self._reserved -= size
            taken = len(batch.values) if batch is not None else 0
            if taken < size:
                in_flight.release(size - taken)
        return batch

    async def _sink_loop(self, receive: ChannelReceiver[Batch]) -> None:
        await self.sinks[0].run(receive)
        self._sinks_ended()

    def _sinks_ended(self) -> None:
        """A group of sinks ended: the sink, the branches or the side outputs.

        After the last group the drain guard has nothing left to wait for.
        """
        self._sink_groups_left -= 1
        if self._sink_groups_left <= 0 and self._guard_scope is not None:
            self._guard_scope.cancel()

    async def _quarantine(self, source: SourceBatch, batch: Batch) -> Batch:
        """Dead-letter records that crashed the run ``max_crashes`` times (``crash_loop``)."""
        crashes = self.quarantine[source.partition]
        kept: list[Any] = []
        marks: list[int] = []
        for i, value in enumerate(source.values):
            offset = source.offset_of(i)
            count = crashes.get(offset)
            if count is None:
                kept.append(value)
                continue
            marks.append(len(kept))
            crash = self.checkpointer.guard.crashes.get(crash_key(source.partition, offset))
            error = poison_pill(self.pipeline.name, count, crash)
            self.router.dead_letter_record(
                (crash.stage if crash is not None else "") or "unknown",
                batch.ack,
                source.record(i),
                error,
                "crash_loop",
                attempts=count,
                failed_between=None if crash is None else (crash.first_at, crash.last_at),
            )
        if not marks:
            return batch
        await self.router.flush()
        return Batch(kept, batch.ack, DropsOrigin(batch.origin, marks))

    async def _reject(self, source: SourceBatch, batch: Batch) -> Batch:
        """Route the records the source could not decode (``SourceBatch.errors``), as the source."""
        errors = source.errors or {}
        kept: list[Any] = []
        marks: list[int] = []
        for i, (item, where) in enumerate(zip(batch.items, batch.sources(), strict=True)):
            error = None if where is None else errors.get(where[1])
            if error is None:
                kept.append(item)
                continue
            marks.append(len(kept))
            self.router.handle(self.source.name, batch, i, item, error)
        await self.router.flush()
        return Batch(kept, batch.ack, DropsOrigin(batch.origin, marks))

    def _quarantined(self, counts: Mapping[str, int]) -> dict[str, dict[int, int]]:
        """Records whose crash count reached ``max_crashes``, by partition and offset.

        Raises:
            ConfigError: Such a record exists but there is no dead-letter store to
                quarantine it in; running on would crash on it again.
        """
        found: dict[str, dict[int, int]] = {}
        for key, count in counts.items():
            partition, _, offset = key.rpartition("@")
            if count >= self.options.max_crashes and offset.lstrip("-").isdigit():
                found.setdefault(partition, {})[int(offset)] = count
        if found and self.options.dead_letter is None:
            key, count = next((k, c) for k, c in counts.items() if c >= self.options.max_crashes)
            raise ConfigError(
                "dead_letter",
                f"record {key} stopped pipeline {self.pipeline.name!r} {count} times "
                f"(max_crashes={self.options.max_crashes}); quarantining it needs a "
                "dead-letter store: set dead_letter=",
            )
        return found

    def _guard_after(self, last: Checkpoint | None, crash_counts: dict[str, int]) -> CrashGuard:
        """This run's crash guard: an unclean end of the last run is counted (see CrashGuard).

        Every run bounds its reads past its last saved frontier (``read_bound``);
        after an unclean end it watches the batches the dead run may have read.
        """
        bound = READ_BOUND_FACTOR * self.options.max_in_flight
        if last is None:
            return CrashGuard(running=True, read_bound=bound)
        guard = last.guard
        if not guard.running:
            return replace(guard.after_clean_end(), read_bound=bound)
        self._watch = CrashWatch.after(guard)
        died = guard.died()
        if died is not None:
            crash_counts[died] = crash_counts.get(died, 0) + 1
        after = guard.after_unclean_end(
            last.positions, max_crashes=self.options.max_crashes, now=self.clock.time()
        )
        return replace(after, read_bound=bound)

    async def _finish(self) -> None:
        """Flush, save the final checkpoint, then report: whatever fails, the run ends.

        A flush or final save that fails is the run's error when it had none
        (the records it held are read again on the next start); after an
        earlier error it is logged, and the earlier error stays the run's.
        """
        try:
            with anyio.move_on_after(FINAL_CHECKPOINT_TIMEOUT) as scope:
                try:
                    await self._final_flush()
                finally:
                    if self._claimed():  # an abort during start-up may come before the claim
                        # The run ended on its own: the next start is not after a crash.
                        ck = self.checkpointer
                        ck.guard = replace(ck.guard, running=False, in_progress=None, unclean={})
                        await ck.save(force=True)
            if scope.cancelled_caught:
                log.warning(
                    "pipeline %s: the final flush and checkpoint did not finish within %g s "
                    "and were given up (a sink or checkpoint store that does not answer); "
                    "the next start reads again from the last checkpoint that was saved",
                    self.pipeline.name,
                    FINAL_CHECKPOINT_TIMEOUT,
                    extra={"pipeline": self.pipeline.name},
                )
        except Exception as exc:
            if self.error is None:
                self.error, self.outcome = exc, "failed"
            else:
                log.warning(
                    "pipeline %s: the final flush or checkpoint failed too (%s: %s)",
                    self.pipeline.name,
                    type(exc).__name__,
                    self.options.redactor.redact(str(exc)),
                    extra={"pipeline": self.pipeline.name},
                )
        finally:
            left = self.in_flight.in_flight - self._reserved
            if left > 0 and self.outcome in ("failed", "aborted"):
                # Read and not done: the checkpoint stays before them, the next run
                # reads them again. Said in the report, so every record read is in it.
                self._count_source_outcome("left_in_flight", left)
            self.report = self._report()
            self.finished.set()

    async def _final_flush(self) -> None:
        """Flush the sink, if it was opened; an abort cancels the flush (not the checkpoint)."""
        if not self._opened:
            return
        with anyio.CancelScope() as scope:
            self._flush_scope = scope
            try:
                for runner in self.sinks:
                    await runner.sink.flush()
            finally:
                self._flush_scope = None

    # -- helpers ---------------------------------------------------------------

    def _stage_context(self, step_id: str) -> StageContext:
        router = self.router

        def dead_letter(
            batch: Batch, index: int, error: BaseException, reason: str | None = None
        ) -> None:
            router.dead_letter_item(step_id, batch, index, error, reason)

        counters = next(
            seg.counters
            for seg in self.all_segments()
            if isinstance(seg, StageSegment) and seg.stage.step_id == step_id
        )

        def dropped(count: int) -> None:
            counters.dropped += count

        def absorbed(count: int) -> None:
            counters.absorbed += count
            router.observe_written(count)

        def source_exhausted() -> bool:
            # A source loop that raised closes its channel too: only reaching the
            # end of every input is an end of input.
            ended = self._inputs_ended == len(self.feeds)
            return ended and self.outcome == "completed" and self.error is None

        stage = next(
            seg.stage
            for seg in self.all_segments()
            if isinstance(seg, StageSegment) and seg.stage.step_id == step_id
        )

        def side_output(name: str) -> Callable[[Batch], Awaitable[None]]:
            if name not in getattr(stage, "side_outputs", ()):
                raise ConfigError(
                    f"stage {step_id!r}",
                    f"asks for side output {name!r}, which it does not name in side_outputs",
                )
            return self._side_emit(name)

        return StageContext(
            pipeline=self.pipeline.name,
            clock=self.clock,
            dead_letter=dead_letter,
            dropped=dropped,
            absorbed=absorbed,
            source_exhausted=source_exhausted,
            count=self._count_source_outcome,
            policy_hooks=(self.events, *self.options.policy_hooks),
            batch_size=self.options.batch_size,
            max_in_flight=self.options.max_in_flight,
            shelter=self.shelter,
            side_output=side_output,
            positions=lambda: self.tracker.positions(),
            checkpoints_saved=lambda: self.checkpointer.saved,
            state_log=self.state_log,
            park=lambda batch: self.in_flight.park(batch.ack, step_id),
            unpark=lambda batch: self.in_flight.unpark(batch.ack, step_id),
        )

    def _side_emit(self, name: str) -> Callable[[Batch], Awaitable[None]]:
        """The emit of side output ``name``: into its branch, once the run has made its channel."""

        async def emit(batch: Batch) -> None:
            await self._side_sends[name].send(batch)

        return emit

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for segment in self.all_segments():
            state.update(segment.snapshot())
        for step_id in self._logged_steps:  # their state is in the changelog
            state.pop(step_id, None)
        return state

    def all_segments(self) -> tuple[Segment, ...]:
        """The pipeline's segments, then each branch's and each side output's."""
        branches = (*self.branches, *self.side_branches)
        return (*self.segments, *(seg for branch in branches for seg in branch.segments))

    def _branch_statistics(self) -> tuple[StepStats, ...]:
        """The route's counts, if the pipeline routes, then each branch's (side outputs too)."""
        route = () if self.route is None else (self.route.counters.freeze(),)
        branches = (*self.branches, *self.side_branches)
        segments = (seg for branch in branches for seg in branch.segments)
        return (*route, *(stats for segment in segments for stats in segment_step_stats(segment)))

    def _count_source_outcome(self, outcome: str, count: int) -> None:
        """``SourceContext.count``: what the source reports besides records (bounded labels)."""
        outcome = self.outcome_labels.label(outcome)
        self.source_outcomes[outcome] = self.source_outcomes.get(outcome, 0) + count

    def _count_crash(self, error: BaseException) -> None:
        if not isinstance(error, PipelineError) or error.partition is None:
            return
        if isinstance(error.error, ConfigError):
            return  # a mistake in the pipeline (a sync step returning a coroutine), not the record
        key = f"{error.partition}@{error.offset}"
        counts = self.checkpointer.crash_counts
        counts[key] = counts.get(key, 0) + 1
        guard = self.checkpointer.guard
        crash = crash_record(
            guard.crashes.get(key),
            error.stage,
            error.error,
            self.clock.time(),
            self.options.redactor.redact,
        )
        self.checkpointer.guard = replace(guard, crashes={**guard.crashes, key: crash})

    def _report(self) -> RunReport:
        report = build_report(
            self.pipeline.name,
            self.outcome,
            self.statistics(),
            self.error,
            redact=self.options.redactor.redact,
        )
        if not self._upstreams_started:
            return report
        return replace(report, upstream=self._upstreams_started[0]._report())


def _noop() -> None:
    return None


async def _close_sinks(sinks: Sequence[Sink]) -> None:
    """``aclose()`` every sink, each even if one before it failed."""
    if not sinks:
        return
    try:
        await sinks[0].aclose()
    finally:
        await _close_sinks(sinks[1:])


def _chunks(batch: SourceBatch, size: int) -> list[SourceBatch]:
    """``batch`` cut into consecutive source batches of at most ``size`` records."""
    n = len(batch.values)
    if size >= n:
        return [batch]
    parts = []
    for i in range(0, n, size):
        j = min(i + size, n)
        nbytes = batch.nbytes * j // n - batch.nbytes * i // n  # the parts sum to the whole
        parts.append(
            SourceBatch(
                batch.partition,
                batch.values[i:j],
                start=batch.offset_of(i),
                end=batch.offset_of(j) if j < n else batch.end,
                offsets=None if batch.offsets is None else batch.offsets[i:j],
                keys=None if batch.keys is None else batch.keys[i:j],
                headers=None if batch.headers is None else batch.headers[i:j],
                timestamps=None if batch.timestamps is None else batch.timestamps[i:j],
                errors=_errors_between(batch, i, j),
                assignment=batch.assignment,
                nbytes=nbytes,
            )
        )
    return parts


def _errors_between(batch: SourceBatch, i: int, j: int) -> dict[int, DataError] | None:
    """``batch.errors`` of the values ``i`` to ``j``, indexed from ``i``."""
    if not batch.errors:
        return None
    return {k - i: error for k, error in batch.errors.items() if i <= k < j} or None


async def _run_upstream(upstream: Runtime, done: anyio.Event) -> None:
    """Run the pipeline before a through(); its failure fails the run (the task group's)."""
    try:
        await upstream.run()
    finally:
        done.set()


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
        if self._runtime._claimed():  # not when an abort cut start-up short of the claim
            await self._runtime.checkpointer.save(force=True)

    def statistics(self) -> RunStatistics:
        """A frozen snapshot of the run's counters and positions right now."""
        return self._runtime.statistics()

    @property
    def report(self) -> RunReport | None:
        """The run's report once it has ended, also when it failed (``None`` until then)."""
        return self._runtime.report

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The run's own Prometheus registry (see ``riprap.observability.serve_health``)."""
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
async def open_pipeline(
    pipeline: Plan, *, created: Callable[[RunningPipeline], None] | None = None
) -> AsyncIterator[RunningPipeline]:
    """Run ``pipeline`` in the background of the block; leaving it stops the run gracefully.

    A failing run does not cancel the block (it may be a web server's main
    task): :meth:`RunningPipeline.wait` raises the error, and so does leaving
    the block. ``created`` gets the run's handle before start-up (claim, open),
    so that a stop or an abort (``riprap.run``'s signals) can reach it at any moment.
    """
    runtime = Runtime(pipeline)
    handle = RunningPipeline(runtime)
    if created is not None:
        created(handle)
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
                yield handle
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
