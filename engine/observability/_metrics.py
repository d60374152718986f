"""Prometheus metrics of a run, read from its statistics snapshot at scrape time.

The runtime already counts per batch (records in and out per step, drops,
dead letters by reason and deleted by retention, retries, breaker changes,
checkpoints); on each scrape the collector takes one
:class:`~riprap.RunStatistics` snapshot of those counters and turns it into
metric families, so metrics add nothing to the hot path and never touch the
runtime. Each run has its own registry, so an embedding service's default
registry is never touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from riprap.observability._partitions import MovedLast
from riprap.observability._statistics import steps_and_sink

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from riprap.observability._histogram import HistogramSnapshot
    from riprap.observability._statistics import RunStatistics

BREAKER_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0, "forced_open": 3.0}
"""``riprap_breaker_state`` values."""


@final
class RunCollector(Collector):
    """Yields the metric families of one run from one statistics snapshot per scrape.

    Args:
        pipeline: The pipeline's name (the ``pipeline`` label).
        statistics: Returns the run's current :class:`~riprap.RunStatistics`.
    """

    def __init__(self, pipeline: str, statistics: Callable[[], RunStatistics]) -> None:
        self.pipeline = pipeline
        self.statistics = statistics
        self._moved = MovedLast()

    def collect(self) -> Iterator[Metric]:
        stats = self.statistics()
        yield from self._records(stats)
        yield from self._flow(stats)
        yield from self._latencies(stats)
        yield from self._dead_letters(stats)
        yield from self._source_outcomes(stats)
        yield from self._gauges(stats)
        yield from self._checkpoints(stats)
        yield from self._policies(stats)
        yield from self._event_loop(stats)

    def _records(self, stats: RunStatistics) -> Iterator[Metric]:
        name = self.pipeline
        steps = steps_and_sink(stats)
        records = CounterMetricFamily(
            "riprap_records",
            "Records by step and outcome (in, out, dropped, absorbed, error).",
            labels=["pipeline", "stage", "outcome"],
        )
        records.add_metric([name, stats.source.name, "in"], stats.records_in)
        for step in steps:
            stage = step.step_id
            records.add_metric([name, stage, "in"], step.records_in)
            records.add_metric([name, stage, "out"], step.records_out)
            records.add_metric([name, stage, "dropped"], step.dropped)
            records.add_metric([name, stage, "absorbed"], step.absorbed)
            records.add_metric([name, stage, "error"], step.errors)
        yield records
        seconds = CounterMetricFamily(
            "riprap_stage_busy_seconds",
            "Seconds each step spent processing batches (fused steps: their loop's).",
            labels=["pipeline", "stage"],
        )
        batches = CounterMetricFamily(
            "riprap_stage_batches", "Batches each step processed.", labels=["pipeline", "stage"]
        )
        for step in steps:
            seconds.add_metric([name, step.step_id], step.busy_seconds)
            batches.add_metric([name, step.step_id], step.batches)
        yield seconds
        yield batches

    def _flow(self, stats: RunStatistics) -> Iterator[Metric]:
        """What goes in and what is done: the denominators of rates and the stall signal."""
        name = self.pipeline
        read = CounterMetricFamily(
            "riprap_source_records",
            "Records read from the source (the denominator of dead-letter and drop rates).",
            labels=["pipeline", "source"],
        )
        read.add_metric([name, stats.source.name], stats.records_in)
        yield read
        done = CounterMetricFamily(
            "riprap_records_done",
            "Records done: written by the sink, dropped, dead-lettered or absorbed.",
            labels=["pipeline"],
        )
        absorbed = sum(step.absorbed for step in stats.steps)
        done.add_metric([name], stats.records_out + stats.dropped + stats.dead_lettered + absorbed)
        yield done

    def _latencies(self, stats: RunStatistics) -> Iterator[Metric]:
        name = self.pipeline
        steps = HistogramMetricFamily(
            "riprap_step_latency_seconds",
            "Seconds a step spent on one batch (fused steps: their loop's time).",
            labels=["pipeline", "stage"],
        )
        for step in stats.steps:
            _add_histogram(steps, [name, step.step_id], step.latency)
        yield steps
        sink = HistogramMetricFamily(
            "riprap_sink_write_seconds",
            "Seconds one sink write of a batch took, retries included.",
            labels=["pipeline", "stage"],
        )
        # Every sink of a fan-out or route, or the one sink.
        for written in stats.sinks or ((stats.sink,) if stats.sink is not None else ()):
            _add_histogram(sink, [name, written.step_id], written.latency)
        yield sink
        end_to_end = HistogramMetricFamily(
            "riprap_end_to_end_latency_seconds",
            "Seconds from a source batch's read to its done (written, dead-lettered or dropped).",
            labels=["pipeline"],
        )
        _add_histogram(end_to_end, [name], stats.source.end_to_end)
        yield end_to_end

    def _dead_letters(self, stats: RunStatistics) -> Iterator[Metric]:
        name = self.pipeline
        family = CounterMetricFamily(
            "riprap_dead_letters",
            "Records written to the dead-letter sink.",
            labels=["pipeline", "reason"],
        )
        for reason, count in sorted(stats.dead_letters.items()):
            family.add_metric([name, reason], count)
        yield family
        quarantined = CounterMetricFamily(
            "riprap_crash_loop_quarantines",
            "Records quarantined after stopping the run repeatedly.",
            labels=["pipeline"],
        )
        quarantined.add_metric([name], stats.dead_letters.get("crash_loop", 0))
        yield quarantined
        deleted = CounterMetricFamily(
            "riprap_dead_letters_deleted",
            "Stored dead letters deleted by the store's configured retention.",
            labels=["pipeline"],
        )
        deleted.add_metric([name], stats.dead_letters_deleted)
        yield deleted

    def _source_outcomes(self, stats: RunStatistics) -> Iterator[Metric]:
        source = stats.source
        family = CounterMetricFamily(
            "riprap_source_outcomes",
            "What the source reported besides records (objects_quarantined...).",
            labels=["pipeline", "source", "outcome"],
        )
        for outcome, count in sorted(source.outcomes.items()):
            family.add_metric([self.pipeline, source.name, outcome], count)
        yield family

    def _gauges(self, stats: RunStatistics) -> Iterator[Metric]:
        name = self.pipeline
        in_flight = GaugeMetricFamily(
            "riprap_in_flight_records", "Records read and not yet done.", labels=["pipeline"]
        )
        in_flight.add_metric([name], stats.in_flight)
        yield in_flight
        depth = GaugeMetricFamily(
            "riprap_queue_depth_batches",
            "Batches waiting in front of each step.",
            labels=["pipeline", "stage"],
        )
        for stage, batches in stats.queue_depths.items():
            depth.add_metric([name, stage], batches)
        yield depth
        position = GaugeMetricFamily(
            "riprap_position",
            "Committable position per partition (at most 1,000: those that moved last).",
            labels=["pipeline", "partition"],
        )
        for partition, offset in self._moved.shown(stats.positions):
            position.add_metric([name, partition], offset)
        yield position
        partitions = GaugeMetricFamily(
            "riprap_partitions", "Partitions with a position, shown or not.", labels=["pipeline"]
        )
        partitions.add_metric([name], len(stats.positions))
        yield partitions
        lag = GaugeMetricFamily(
            "riprap_source_lag_records",
            "Records behind the end of each partition, when the source knows it.",
            labels=["pipeline", "partition"],
        )
        for partition, behind in sorted((stats.source.lag or {}).items()):
            lag.add_metric([name, partition], behind)
        yield lag
        seconds = GaugeMetricFamily(
            "riprap_source_lag_seconds",
            "Seconds behind per partition: the age of its last record read (0 when caught up).",
            labels=["pipeline", "partition"],
        )
        for partition, behind_s in sorted(stats.source.lag_seconds.items()):
            seconds.add_metric([name, partition], behind_s)
        yield seconds
        starts = GaugeMetricFamily(
            "riprap_starts",
            "Times the pipeline was started, ever (its checkpoint epoch): restarts show here.",
            labels=["pipeline"],
        )
        starts.add_metric([name], stats.checkpoint.epoch)
        yield starts

    def _checkpoints(self, stats: RunStatistics) -> Iterator[Metric]:
        name = self.pipeline
        ck = stats.checkpoint
        saved = CounterMetricFamily(
            "riprap_checkpoints", "Checkpoint saves by outcome.", labels=["pipeline", "outcome"]
        )
        saved.add_metric([name, "saved"], ck.saved)
        saved.add_metric([name, "skipped"], ck.skipped)
        saved.add_metric([name, "failed"], ck.failed)
        yield saved
        duration = GaugeMetricFamily(
            "riprap_checkpoint_duration_seconds", "Duration of the last save.", labels=["pipeline"]
        )
        if ck.last_duration is not None:
            duration.add_metric([name], ck.last_duration)
        yield duration
        age = GaugeMetricFamily(
            "riprap_checkpoint_age_seconds", "Seconds since the last save.", labels=["pipeline"]
        )
        if ck.age is not None:
            age.add_metric([name], ck.age)
        yield age
        interval = GaugeMetricFamily(
            "riprap_checkpoint_interval_seconds",
            "Real seconds between the last two periodic checkpoints.",
            labels=["pipeline"],
        )
        if ck.last_interval is not None:
            interval.add_metric([name], ck.last_interval)
        yield interval
        late = CounterMetricFamily(
            "riprap_checkpoint_late_intervals",
            "Periodic checkpoints that came twice the configured interval or more after the last.",
            labels=["pipeline"],
        )
        late.add_metric([name], ck.late)
        yield late

    def _policies(self, stats: RunStatistics) -> Iterator[Metric]:
        name = self.pipeline
        policies = stats.policies
        for metric, help_text, values in (
            ("riprap_retries", "Retries scheduled.", policies.retries_by_stage),
            ("riprap_fallbacks", "Calls answered by a fallback.", policies.fallbacks_by_stage),
            (
                "riprap_abandoned_calls",
                "Calls abandoned after ignoring their timeout's cancellation.",
                policies.abandoned_by_stage,
            ),
        ):
            family = CounterMetricFamily(metric, help_text, labels=["pipeline", "stage"])
            for stage, count in sorted(values.items()):
                family.add_metric([name, stage], count)
            yield family
        trips = CounterMetricFamily(
            "riprap_breaker_trips", "Times a breaker opened.", labels=["pipeline", "dependency"]
        )
        state = GaugeMetricFamily(
            "riprap_breaker_state",
            "Breaker state: 0 closed, 1 half-open, 2 open, 3 forced open.",
            labels=["pipeline", "dependency"],
        )
        for breaker in policies.breakers:
            trips.add_metric(
                [name, breaker.name], policies.trips_by_dependency.get(breaker.name, 0)
            )
            state.add_metric(
                [name, breaker.name], BREAKER_STATE_VALUES.get(str(breaker.state), 0.0)
            )
        yield trips
        yield state
        in_use = GaugeMetricFamily(
            "riprap_bulkhead_in_use", "Calls inside a bulkhead.", labels=["pipeline", "bulkhead"]
        )
        waiting = GaugeMetricFamily(
            "riprap_bulkhead_waiting",
            "Calls waiting for a bulkhead.",
            labels=["pipeline", "bulkhead"],
        )
        for bulkhead in policies.bulkheads:
            in_use.add_metric([name, bulkhead.name], bulkhead.in_use)
            waiting.add_metric([name, bulkhead.name], bulkhead.waiting)
        yield in_use
        yield waiting

    def _event_loop(self, stats: RunStatistics) -> Iterator[Metric]:
        name = self.pipeline
        lag = GaugeMetricFamily(
            "riprap_event_loop_lag_seconds",
            "Seconds the event loop was late in the lag monitor's last measurement.",
            labels=["pipeline"],
        )
        lag.add_metric([name], stats.loop.last_lag)
        yield lag
        stalls = CounterMetricFamily(
            "riprap_event_loop_stalls",
            "Event-loop lags above loop_lag_threshold, by the step that held the loop.",
            labels=["pipeline", "stage"],
        )
        for stage, count in sorted(stats.loop.stalls.items()):
            # A fused loop (``a+b``; a step id never holds "+") counts for each of its steps.
            for step_id in stage.split("+"):
                stalls.add_metric([name, step_id], count)
        yield stalls
        threads = CounterMetricFamily(
            "riprap_abandoned_threads",
            "Calls of offloaded steps given up while their worker thread ran on.",
            labels=["pipeline", "stage"],
        )
        for step in stats.steps:
            if step.threads_abandoned:
                threads.add_metric([name, step.step_id], step.threads_abandoned)
        yield threads


def _add_histogram(
    family: HistogramMetricFamily, labels: list[str], snapshot: HistogramSnapshot | None
) -> None:
    """One labelled histogram from a snapshot (nothing when there is none)."""
    if snapshot is None:
        return
    buckets = [
        ("+Inf" if bound == float("inf") else repr(bound), count)
        for bound, count in snapshot.cumulative()
    ]
    family.add_metric(labels, buckets, snapshot.total)


def create_registry(
    pipeline: str,
    statistics: Callable[[], RunStatistics],
    upstream: Sequence[tuple[str, Callable[[], RunStatistics]]] = (),
) -> CollectorRegistry:
    """A registry of its own holding the collector of the run ``statistics`` describes.

    ``upstream``: the pipelines before a ``.through()``, each ``(name, statistics)``:
    their samples join the same families, under their own ``pipeline`` label.
    """
    registry = CollectorRegistry(auto_describe=False)
    collectors = [RunCollector(pipeline, statistics)]
    collectors += [RunCollector(name, stats) for name, stats in upstream]
    registry.register(collectors[0] if len(collectors) == 1 else _Joined(collectors))
    return registry


@final
class _Joined(Collector):
    """Several runs' collectors as one: each family once, with every run's samples."""

    def __init__(self, collectors: Sequence[RunCollector]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for collector in self.collectors:
            for family in collector.collect():
                known = families.setdefault(family.name, family)
                if known is not family:
                    known.samples.extend(family.samples)
        yield from families.values()
