"""What a run did: per-step counters and the report every run ends with (I7)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from riprap.observability._failure import describe_failure
from riprap.observability._histogram import LatencyHistogram
from riprap.observability._redact import DEFAULT_REDACTOR
from riprap.observability._statistics import PolicySummary, StepStats, steps_and_sink
from riprap.policies import (
    CallAbandoned,
    CircuitState,
    CircuitStateChanged,
    FallbackUsed,
    RetryScheduled,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from riprap.observability._failure import Failure
    from riprap.observability._statistics import Outcome, RunStatistics
    from riprap.policies import Bulkhead, CircuitBreaker, PolicyEvent


@final
class StepCounters:
    """Mutable per-step counts, updated once per batch (cheap in the hot path)."""

    __slots__ = (
        "absorbed",
        "batches",
        "busy_seconds",
        "dropped",
        "errors",
        "latency",
        "records_in",
        "records_out",
        "step_id",
        "threads_abandoned",
    )

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id
        self.records_in = 0
        self.records_out = 0
        self.errors = 0
        self.dropped = 0
        self.absorbed = 0
        self.batches = 0
        self.busy_seconds = 0.0
        self.threads_abandoned = 0
        self.latency = LatencyHistogram()

    def timed(self, started: float) -> None:
        """Count one batch whose processing started at ``started`` (``perf_counter``)."""
        self.took(time.perf_counter() - started)

    def took(self, seconds: float) -> None:
        """Count one batch that took ``seconds`` to process."""
        self.batches += 1
        self.busy_seconds += seconds
        self.latency.observe(seconds)

    def freeze(self) -> StepStats:
        """An immutable copy."""
        return StepStats(
            self.step_id,
            self.records_in,
            self.records_out,
            self.errors,
            self.dropped,
            self.absorbed,
            self.batches,
            self.busy_seconds,
            self.threads_abandoned,
            self.latency.freeze(),
        )


@dataclass(frozen=True, slots=True)
class RunReport:
    """How a run ended and what happened to every record.

    Attributes:
        outcome: ``completed`` (source exhausted), ``stopped`` (asked to stop and
            drained; records still in flight after ``drain_timeout`` are left
            to the next run and counted as ``drain_abandoned`` in
            ``source_outcomes``), ``aborted`` (stopped without draining) or ``failed``.
        records_in: Records read from the source.
        records_out: Records the sink wrote.
        dropped: Records a filter removed on purpose.
        absorbed: Records folded into a stage's state (windows), done there.
        dead_lettered: Records sent to the dead-letter queue, by reason.
        dead_letters_deleted: Stored dead letters the store deleted under its
            configured retention (a full JSON Lines store's oldest file).
        fallbacks: Calls answered by a step's fallback (degraded results).
        retries: Retries of failed calls, in steps and the sink.
        breaker_trips: Times a circuit breaker opened.
        abandoned_calls: Calls abandoned after ignoring their timeout's
            cancellation (their tasks were left running; see the log).
        sinks: Each sink's counts when the pipeline fans out (empty with one sink).
        source_outcomes: What the source reported besides records, by outcome
            (``objects_quarantined``: objects set aside whole), and the records
            of the source batches a failed or aborted run left not done
            (``left_in_flight``: the checkpoint stays before them and the next
            run reads them all again, also those of them this run already
            wrote or dropped, as ``drain_abandoned`` counts them for a stop).
        duration: Seconds from start to the final checkpoint.
        checkpoints: Checkpoints written.
        positions: The final checkpointed position of every partition.
        steps: Per-step counts.
        error: The message of the error that failed the run, if any.
        failure: What failed the run: the step, the record's position, the
            user's frame of the traceback and the whole traceback (redacted).
        upstream: The report of the pipeline's first half when it is split by
            ``.through()`` (its own counts, positions and outcome).
    """

    pipeline: str
    outcome: Outcome
    records_in: int
    records_out: int
    dropped: int
    duration: float
    checkpoints: int
    positions: Mapping[str, int]
    steps: tuple[StepStats, ...]
    dead_lettered: Mapping[str, int] = field(default_factory=dict)
    absorbed: int = 0
    fallbacks: int = 0
    retries: int = 0
    breaker_trips: int = 0
    error: str | None = None
    abandoned_calls: int = 0
    source_outcomes: Mapping[str, int] = field(default_factory=dict)
    dead_letters_deleted: int = 0
    failure: Failure | None = None
    sinks: tuple[StepStats, ...] = ()
    upstream: RunReport | None = None

    @property
    def rate(self) -> float:
        """Records read per second over the run."""
        return self.records_in / self.duration if self.duration > 0 else 0.0

    def format(self, *, verbose: bool = False) -> str:
        """A human-readable summary, one fact per line; ``verbose`` adds the whole traceback."""
        lines = [
            f"pipeline {self.pipeline}: {self.outcome}",
            f"  records in      {self.records_in:>12,}",
            f"  written         {self.records_out:>12,}",
            # Each sink of a fan-out on its own line, aligned with the counts.
            *(
                f"    {s.step_id}{s.records_out:>{max(26 - len(s.step_id), 1)},}"
                for s in self.sinks
            ),
            f"  dropped         {self.dropped:>12,}",
            f"  absorbed        {self.absorbed:>12,}",
            f"  dead-lettered   {sum(self.dead_lettered.values()):>12,}",
        ]
        lines += [
            f"    {reason}{count:>{max(26 - len(reason), 1)},}"
            for reason, count in self.dead_lettered.items()
        ]
        if self.dead_letters_deleted:
            lines.append(f"  dlq deleted     {self.dead_letters_deleted:>12,}  (retention)")
        if self.source_outcomes:
            lines.append("  source")
            # Right-aligned with the counts above even for outcome names longer than 14.
            lines += [
                f"    {outcome}{count:>{max(26 - len(outcome), 1)},}"
                for outcome, count in self.source_outcomes.items()
            ]
        lines += [
            f"  fallbacks       {self.fallbacks:>12,}",
            f"  retries         {self.retries:>12,}",
            f"  breaker trips   {self.breaker_trips:>12,}",
            *([f"  abandoned calls {self.abandoned_calls:>12,}"] if self.abandoned_calls else []),
            f"  time            {self.duration:>11.2f}s",
            f"  rate            {self.rate:>10,.0f}/s",
            f"  checkpoints     {self.checkpoints:>12,}",
        ]
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.failure is not None:
            lines += _failure_lines(self.failure, verbose=verbose)
        if self.upstream is not None:  # the first half of a through(), indented under it
            first = self.upstream.format(verbose=verbose).splitlines()
            lines += ["  first half:", *(f"  {line}" for line in first)]
        return "\n".join(lines)

    def to_dict(self, *, verbose: bool = False) -> dict[str, Any]:
        """JSON-ready form (``riprap --log-format json``); ``verbose`` adds the whole traceback."""
        return {
            "pipeline": self.pipeline,
            "outcome": self.outcome,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "dropped": self.dropped,
            "absorbed": self.absorbed,
            "dead_lettered": dict(self.dead_lettered),
            "dead_letters_deleted": self.dead_letters_deleted,
            "source_outcomes": dict(self.source_outcomes),
            "fallbacks": self.fallbacks,
            "retries": self.retries,
            "breaker_trips": self.breaker_trips,
            "abandoned_calls": self.abandoned_calls,
            "duration": self.duration,
            "rate": self.rate,
            "checkpoints": self.checkpoints,
            "positions": dict(self.positions),
            "error": self.error,
            "failure": None if self.failure is None else self.failure.to_dict(verbose=verbose),
            **({} if self.upstream is None else {"upstream": self.upstream.to_dict()}),
        }


def _failure_lines(failure: Failure, *, verbose: bool) -> list[str]:
    """The failing step, the record and the user's line of code; the whole chain if ``verbose``."""
    if failure.step is None:  # not a step's failure: the message may not name the type
        lines = [f"  exception       {failure.error_type}"]
    else:
        lines = [f"  failed step     {failure.step}"]
    if failure.position is not None:
        lines.append(f"  failed record   {failure.position}")
    if failure.frame is not None:
        lines.append("  in your code:")
        lines += [f"    {line}" for line in failure.frame.format().splitlines()]
    if verbose:
        lines.append("  traceback:")
        lines += [f"    {line}" for line in failure.traceback.rstrip("\n").splitlines()]
    else:
        lines.append("  (riprap -v shows the whole traceback)")
    return lines


def build_report(
    pipeline: str,
    outcome: Outcome,
    stats: RunStatistics,
    error: BaseException | None,
    *,
    redact: Callable[[str], str] = DEFAULT_REDACTOR.redact,
) -> RunReport:
    """The report of a run that ended with ``outcome``, from its final statistics.

    The error line is redacted with ``redact`` (the pipeline's redactor).
    """
    policies = stats.policies
    return RunReport(
        pipeline=pipeline,
        outcome=outcome,
        records_in=stats.records_in,
        records_out=stats.records_out,
        dropped=stats.dropped,
        duration=max(stats.elapsed, 0.0),
        checkpoints=stats.checkpoints,
        positions=stats.positions,
        steps=steps_and_sink(stats),
        dead_lettered=stats.dead_letters,
        absorbed=sum(step.absorbed for step in stats.steps),
        fallbacks=sum(policies.fallbacks_by_stage.values()),
        retries=sum(policies.retries_by_stage.values()),
        breaker_trips=sum(policies.trips_by_dependency.values()),
        abandoned_calls=sum(policies.abandoned_by_stage.values()),
        source_outcomes=stats.source.outcomes,
        sinks=stats.sinks,
        dead_letters_deleted=stats.dead_letters_deleted,
        error=redact(str(error)) if error is not None else None,
        failure=describe_failure(error, redact)
        if error is not None and outcome == "failed"
        else None,
    )


@final
class PolicyCounters:
    """A policy hook that counts retries, fallbacks, breaker trips and abandoned calls."""

    __slots__ = (
        "abandoned_by_stage",
        "fallbacks_by_stage",
        "open_since",
        "retries_by_stage",
        "trips_by_dependency",
    )

    def __init__(self) -> None:
        self.abandoned_by_stage: dict[str, int] = {}
        self.retries_by_stage: dict[str, int] = {}
        self.fallbacks_by_stage: dict[str, int] = {}
        self.trips_by_dependency: dict[str, int] = {}
        self.open_since: dict[str, float] = {}

    def __call__(self, event: PolicyEvent) -> None:
        stage = event.stage or ""
        if isinstance(event, RetryScheduled):
            self.retries_by_stage[stage] = self.retries_by_stage.get(stage, 0) + 1
        elif isinstance(event, FallbackUsed):
            self.fallbacks_by_stage[stage] = self.fallbacks_by_stage.get(stage, 0) + 1
        elif isinstance(event, CallAbandoned):
            self.abandoned_by_stage[stage] = self.abandoned_by_stage.get(stage, 0) + 1
        elif isinstance(event, CircuitStateChanged):
            dependency = event.dependency or ""
            if event.new in (CircuitState.OPEN, CircuitState.FORCED_OPEN):
                self.trips_by_dependency[dependency] = (
                    self.trips_by_dependency.get(dependency, 0) + 1
                )
                self.open_since.setdefault(dependency, event.at)
            elif event.new is CircuitState.CLOSED:
                self.open_since.pop(dependency, None)

    def freeze(
        self, breakers: Iterable[CircuitBreaker], bulkheads: Iterable[Bulkhead]
    ) -> PolicySummary:
        """An immutable copy, with the state of the run's ``breakers`` and ``bulkheads``."""
        return PolicySummary(
            retries_by_stage=dict(self.retries_by_stage),
            fallbacks_by_stage=dict(self.fallbacks_by_stage),
            trips_by_dependency=dict(self.trips_by_dependency),
            open_since=dict(self.open_since),
            breakers=tuple(breaker.statistics() for breaker in breakers),
            bulkheads=tuple(bulkhead.statistics() for bulkhead in bulkheads),
            abandoned_by_stage=dict(self.abandoned_by_stage),
        )
