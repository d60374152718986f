"""The run's statistics snapshot: one frozen record every observer reads.

The runtime builds it on demand from the counters it keeps per batch, without
awaiting, so a snapshot is a consistent cut of the run. Metrics, health,
alerts, the progress line and the run report read only this record, never the
runtime, and can be tested with a snapshot built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap.observability._histogram import HistogramSnapshot
    from riprap.policies import BreakerStatistics, BulkheadStatistics

Outcome = Literal["completed", "stopped", "failed", "aborted"]
"""How a run ended."""


@dataclass(frozen=True, slots=True)
class StepStats:
    """Counts of one step, by its step id whether or not it was fused with others.

    ``absorbed`` records were folded into the step's state (windows); ``batches``
    and ``busy_seconds`` are the batches processed and the time spent on them,
    and ``latency`` the time per batch; ``threads_abandoned`` counts calls of an
    offloaded step given up while their worker thread ran on (a thread cannot
    be stopped). Steps fused into one loop are timed together: each reports
    the loop's time (the sum of its steps' times, so an upper bound of its own).
    """

    step_id: str
    records_in: int
    records_out: int
    errors: int
    dropped: int
    absorbed: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    threads_abandoned: int = 0
    latency: HistogramSnapshot | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStatistics:
    """The source: records read, what it reported besides records, its lag.

    Attributes:
        name: The source's name.
        records_in: Records read.
        outcomes: What it reported besides records, by outcome (``objects_quarantined``).
        lag: Records behind the end of each partition; ``None`` when the source has no ``lag()``.
        lag_seconds: Seconds behind, per partition whose records carry timestamps:
            the age of the last record read, or 0 when the partition's ``lag`` is 0.
        end_to_end: Seconds from a batch's read to its done (written,
            dead-lettered, dropped or absorbed), per source batch.
    """

    name: str = ""
    records_in: int = 0
    outcomes: Mapping[str, int] = field(default_factory=dict)
    lag: Mapping[str, int] | None = None
    lag_seconds: Mapping[str, float] = field(default_factory=dict)
    end_to_end: HistogramSnapshot | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointStatistics:
    """The checkpointer: saves by outcome, the last save, the run's epoch.

    Attributes:
        saved: Checkpoints written.
        skipped: Periodic saves skipped because the previous one was still running.
        failed: Periodic saves that failed (the next one retries).
        last_duration: Seconds the last save took (``None`` before the first).
        age: Seconds since the last save (``None`` before the first).
        epoch: Times the pipeline was started, ever: restarts show here.
        last_interval: Seconds between the last two periodic checkpoints, measured.
        late: Periodic checkpoints that came twice the configured interval or
            more after the previous one (logged as a warning).
    """

    saved: int = 0
    skipped: int = 0
    failed: int = 0
    last_duration: float | None = None
    age: float | None = None
    epoch: int = 0
    last_interval: float | None = None
    late: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySummary:
    """Retries, fallbacks and breaker trips of the whole run, and its breakers and bulkheads.

    Not :class:`riprap.policies.PolicyStatistics`, which describes one policy stack.

    Attributes:
        retries_by_stage: Retries scheduled, by stage.
        fallbacks_by_stage: Calls answered by a fallback, by stage.
        trips_by_dependency: Times a breaker opened, by dependency.
        open_since: When each open breaker opened (the pipeline clock's ``monotonic``).
        breakers: Every distinct breaker of the steps and the sink.
        bulkheads: Every distinct bulkhead of the steps and the sink.
        abandoned_by_stage: Calls abandoned after ignoring their timeout's
            cancellation (left running in the run's shelter), by stage.
    """

    retries_by_stage: Mapping[str, int] = field(default_factory=dict)
    fallbacks_by_stage: Mapping[str, int] = field(default_factory=dict)
    trips_by_dependency: Mapping[str, int] = field(default_factory=dict)
    open_since: Mapping[str, float] = field(default_factory=dict)
    breakers: tuple[BreakerStatistics, ...] = ()
    bulkheads: tuple[BulkheadStatistics, ...] = ()
    abandoned_by_stage: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopStatistics:
    """The event loop as the run's lag monitor measured it.

    Attributes:
        last_lag: Seconds the loop was late in the last measurement.
        max_lag: The largest lag measured in the run.
        stalls: Lags above ``loop_lag_threshold``, by the step that held the
            loop (``unknown`` when no sync step explains it).
    """

    last_lag: float = 0.0
    max_lag: float = 0.0
    stalls: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunStatistics:
    """A live view of a running pipeline: one frozen snapshot of all its counters.

    The first fields summarise the run; the rest hold the detail observers
    need (per step, source, checkpoints, policies, queues). Built by hand,
    the detail defaults to empty.

    Attributes:
        records_in: Records read from the source.
        records_out: Records the sink wrote (summed over the sinks of a fan-out).
        in_flight: Records read and not yet done.
        dropped: Records a filter removed on purpose.
        dead_lettered: Records sent to the dead-letter queue.
        elapsed: Seconds since the run started.
        checkpoints: Checkpoints written.
        last_checkpoint_age: Seconds since the last checkpoint (``None`` before the first).
        positions: The committable position of every partition.
        open_breakers: Dependencies whose breaker is open.
        lag: Records behind the source's partition ends, if the source knows.
        at: The pipeline clock's ``monotonic`` when the snapshot was taken.
        outcome: How the run ended; ``None`` while it runs.
        steps: Per-step counts, in pipeline order (the sink is :attr:`sink`).
        sink: The sink's counts (the first branch's when the pipeline fans out).
        sinks: Every sink's counts, in branch order, when the pipeline fans
            out (:meth:`riprap.Pipeline.fan_out`); empty with one sink.
        source: The source's counts, outcomes and lag per partition.
        dead_letters: Dead letters by reason.
        queue_depths: Batches waiting in front of each step and the sink.
        checkpoint: The checkpointer's counts.
        policies: Retries, fallbacks, breaker trips, breakers and bulkheads.
        dead_letters_deleted: Dead letters the dead-letter store deleted under
            the retention its user configured (a JSON Lines store's
            ``retention="delete_oldest"``); never without one (I7).
        loop: Event-loop lag and the stalls it caused, by step.
    """

    records_in: int
    records_out: int
    in_flight: int
    dropped: int
    dead_lettered: int
    elapsed: float
    checkpoints: int
    last_checkpoint_age: float | None
    positions: Mapping[str, int]
    open_breakers: tuple[str, ...] = ()
    lag: int | None = None
    at: float = 0.0
    outcome: Outcome | None = None
    steps: tuple[StepStats, ...] = ()
    sink: StepStats | None = None
    sinks: tuple[StepStats, ...] = ()
    source: SourceStatistics = field(default_factory=SourceStatistics)
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    queue_depths: Mapping[str, int] = field(default_factory=dict)
    checkpoint: CheckpointStatistics = field(default_factory=CheckpointStatistics)
    policies: PolicySummary = field(default_factory=PolicySummary)
    dead_letters_deleted: int = 0
    loop: LoopStatistics = field(default_factory=LoopStatistics)


def steps_and_sink(stats: RunStatistics) -> tuple[StepStats, ...]:
    """The per-step counts followed by the sinks' (the run report's ``steps``)."""
    if stats.sinks:
        return (*stats.steps, *stats.sinks)
    return stats.steps if stats.sink is None else (*stats.steps, stats.sink)


def lag_seconds(
    read_times: Mapping[str, float], lag: Mapping[str, int] | None, now: float
) -> dict[str, float]:
    """Seconds each partition is behind: the age at ``now`` of its last record read.

    ``read_times`` holds the timestamp (epoch seconds) of the last record read
    per partition; a partition the source reports as caught up (``lag`` 0) is
    0 seconds behind however old its last record is (an idle topic is not late).
    """
    behind: dict[str, float] = {}
    for partition, stamp in read_times.items():
        caught_up = lag is not None and lag.get(partition) == 0
        behind[partition] = 0.0 if caught_up else max(now - stamp, 0.0)
    return behind
