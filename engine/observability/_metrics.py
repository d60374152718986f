"""Prometheus metrics of a run, read from the runtime's own counters at scrape time.

The runtime already counts per batch (records in and out per step, drops,
dead letters by reason, retries, breaker changes, checkpoints); the collector
turns those counters into metric families when Prometheus scrapes, so metrics
add nothing to the hot path. Each run has its own registry, so an embedding
service's default registry is never touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from riprap._core.steps import OpStep

if TYPE_CHECKING:
    from collections.abc import Iterator

    from riprap._runtime.runtime import Runtime
    from riprap.policies import Bulkhead, CircuitBreaker

BREAKER_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0, "forced_open": 3.0}
"""``riprap_breaker_state`` values."""


@final
class RunCollector(Collector):
    """Yields the metric families of one run (see the module docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        yield from self._records()
        yield from self._dead_letters()
        yield from self._source_outcomes()
        yield from self._gauges()
        yield from self._checkpoints()
        yield from self._policies()

    def _records(self) -> Iterator[Metric]:
        rt = self.runtime
        name = rt.pipeline.name
        records = CounterMetricFamily(
            "riprap_records",
            "Records by step and outcome (in, out, dropped, absorbed, error).",
            labels=["pipeline", "stage", "outcome"],
        )
        records.add_metric([name, rt.source.name, "in"], rt.records_in)
        for counters in (*(s.counters for s in rt.segments), rt.sink_counters):
            stage = counters.step_id
            records.add_metric([name, stage, "in"], counters.records_in)
            records.add_metric([name, stage, "out"], counters.records_out)
            records.add_metric([name, stage, "dropped"], counters.dropped)
            records.add_metric([name, stage, "absorbed"], counters.absorbed)
            records.add_metric([name, stage, "error"], counters.errors)
        yield records
        seconds = CounterMetricFamily(
            "riprap_stage_busy_seconds",
            "Seconds each step spent processing batches.",
            labels=["pipeline", "stage"],
        )
        batches = CounterMetricFamily(
            "riprap_stage_batches", "Batches each step processed.", labels=["pipeline", "stage"]
        )
        for counters in (*(s.counters for s in rt.segments), rt.sink_counters):
            seconds.add_metric([name, counters.step_id], counters.busy_seconds)
            batches.add_metric([name, counters.step_id], counters.batches)
        yield seconds
        yield batches

    def _dead_letters(self) -> Iterator[Metric]:
        rt = self.runtime
        family = CounterMetricFamily(
            "riprap_dead_letters",
            "Records written to the dead-letter sink.",
            labels=["pipeline", "reason"],
        )
        for reason, count in sorted(rt.router.counts.items()):
            family.add_metric([rt.pipeline.name, reason], count)
        yield family
        quarantined = CounterMetricFamily(
            "riprap_crash_loop_quarantines",
            "Records quarantined after stopping the run repeatedly.",
            labels=["pipeline"],
        )
        quarantined.add_metric([rt.pipeline.name], rt.router.counts.get("crash_loop", 0))
        yield quarantined

    def _source_outcomes(self) -> Iterator[Metric]:
        rt = self.runtime
        family = CounterMetricFamily(
            "riprap_source_outcomes",
            "What the source reported besides records (objects_quarantined...).",
            labels=["pipeline", "source", "outcome"],
        )
        for outcome, count in sorted(rt.source_outcomes.items()):
            family.add_metric([rt.pipeline.name, rt.source.name, outcome], count)
        yield family

    def _gauges(self) -> Iterator[Metric]:
        rt = self.runtime
        name = rt.pipeline.name
        stats = rt.statistics()
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
        for stage, batches in rt.queue_depths().items():
            depth.add_metric([name, stage], batches)
        yield depth
        position = GaugeMetricFamily(
            "riprap_position",
            "Committable position per partition.",
            labels=["pipeline", "partition"],
        )
        for partition, offset in sorted(stats.positions.items()):
            position.add_metric([name, partition], offset)
        yield position
        lag = GaugeMetricFamily(
            "riprap_source_lag_records",
            "Records behind the end of each partition, when the source knows it.",
            labels=["pipeline", "partition"],
        )
        lags = getattr(rt.source, "lag", None)
        if callable(lags):
            for partition, behind in sorted(lags().items()):
                lag.add_metric([name, partition], behind)
        yield lag
        starts = GaugeMetricFamily(
            "riprap_starts",
            "Times the pipeline was started, ever (its checkpoint epoch): restarts show here.",
            labels=["pipeline"],
        )
        starts.add_metric([name], rt.checkpointer.epoch)
        yield starts

    def _checkpoints(self) -> Iterator[Metric]:
        rt = self.runtime
        name = rt.pipeline.name
        ck = rt.checkpointer
        saved = CounterMetricFamily(
            "riprap_checkpoints", "Checkpoint saves by outcome.", labels=["pipeline", "outcome"]
        )
        saved.add_metric([name, "saved"], ck.saved)
        saved.add_metric([name, "skipped"], ck.skipped)
        saved.add_metric([name, "failed"], ck.failures)
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
        last = ck.age()
        if last is not None:
            age.add_metric([name], last)
        yield age

    def _policies(self) -> Iterator[Metric]:
        rt = self.runtime
        name = rt.pipeline.name
        events = rt.events
        for metric, help_text, values in (
            ("riprap_retries", "Retries scheduled.", events.retries_by_stage),
            ("riprap_fallbacks", "Calls answered by a fallback.", events.fallbacks_by_stage),
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
        for breaker in breakers(rt):
            trips.add_metric([name, breaker.name], events.trips_by_dependency.get(breaker.name, 0))
            value = BREAKER_STATE_VALUES.get(str(breaker.statistics().state), 0.0)
            state.add_metric([name, breaker.name], value)
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
        for bulkhead in bulkheads(rt):
            stats = bulkhead.statistics()
            in_use.add_metric([name, bulkhead.name], stats.in_use)
            waiting.add_metric([name, bulkhead.name], stats.waiting)
        yield in_use
        yield waiting


def breakers(runtime: Runtime) -> list[CircuitBreaker]:
    """Every distinct breaker of the run's steps and sink."""
    found = {id(p.breaker): p.breaker for p in _policies(runtime) if p.breaker is not None}
    return list(found.values())


def bulkheads(runtime: Runtime) -> list[Bulkhead]:
    """Every distinct bulkhead of the run's steps and sink."""
    found = {id(p.bulkhead): p.bulkhead for p in _policies(runtime) if p.bulkhead is not None}
    return list(found.values())


def _policies(runtime: Runtime) -> list[Policies]:
    stacks = [s.policies for s in runtime.pipeline.steps if isinstance(s, OpStep) and s.policies]
    if runtime.pipeline.sink_policies is not None:
        stacks.append(runtime.pipeline.sink_policies)
    return stacks


def create_registry(runtime: Runtime) -> CollectorRegistry:
    """A registry of its own holding the run's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(runtime))
    return registry


if TYPE_CHECKING:
    from riprap.policies import Policies
