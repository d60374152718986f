"""Resilience policies on pipeline steps and sinks, in virtual time."""

from __future__ import annotations

import random
import threading
from typing import Any

import anyio
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.policies
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.policies import BreakerConfig, Bulkhead, CircuitBreaker, Retry
from riprap.testing import VirtualClock, wait_until

pytestmark = pytest.mark.anyio


class FlakyService:
    """A dependency that fails a seeded 30% of calls with a transient error."""

    def __init__(self, clock: VirtualClock, *, failure_rate: float, seed: int = 3) -> None:
        self.clock = clock
        self.random = random.Random(seed)
        self.failure_rate = failure_rate
        self.calls = 0
        self.failures = 0
        self.down_until = -1.0

    async def enrich(self, value: int) -> dict[str, Any]:
        self.calls += 1
        await self.clock.sleep(0.01)
        if self.clock.monotonic() < self.down_until or self.random.random() < self.failure_rate:
            self.failures += 1
            raise riprap.TransientError("service unavailable", retry_after=None)
        return {"id": value, "score": value * 2}


async def test_flaky_dependency_loses_no_record() -> None:
    """With 30% transient failures, retries get every record to the sink, in order."""
    clock = VirtualClock()
    service = FlakyService(clock, failure_rate=0.3)
    sink = MemorySink()
    p = (
        riprap.Pipeline(
            "flaky", checkpoint=riprap.checkpoints.MemoryCheckpoints(), clock=clock, batch_size=50
        )
        .source(IterableSource("ids", list(range(500))))
        .map(
            "enrich",
            service.enrich,
            concurrency=8,
            retry=Retry(attempts=20, timeout=None, wait_initial=0.05, wait_max=1.0),
            attempt_timeout=1.0,
        )
        .sink(sink)
    )
    async with clock.autojump():
        report = await p.run()
    assert [{"id": i, "score": i * 2} for i in range(500)] == sink.values
    assert service.failures == report.retries
    assert service.failures > 100
    assert {} == report.dead_lettered


async def test_dead_dependency_opens_breaker_and_pipeline_waits_then_completes() -> None:
    """A dead dependency trips the breaker; the pipeline waits (no rejects) and then finishes."""
    clock = VirtualClock()
    service = FlakyService(clock, failure_rate=0.0)
    service.down_until = 30.0  # dead for the first 30 s of virtual time
    breaker = CircuitBreaker(
        "scores",
        BreakerConfig(window_size=20, minimum_calls=10, open_duration=5.0, half_open_probes=2),
        clock=clock,
    )
    sink = MemorySink()
    seen_open: list[float] = []

    def watch(event: Any) -> None:
        if isinstance(event, riprap.policies.CircuitStateChanged) and event.new == "open":
            seen_open.append(clock.monotonic())

    p = (
        riprap.Pipeline(
            "outage",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            clock=clock,
            batch_size=20,
            max_in_flight=100,
            policy_hooks=(watch,),
        )
        .source(IterableSource("ids", list(range(300))))
        .map(
            "enrich",
            service.enrich,
            concurrency=4,
            retry=Retry(attempts=None, timeout=600.0, wait_initial=0.1, wait_max=2.0),
            breaker=breaker,
            bulkhead=Bulkhead(4),
        )
        .sink(sink)
    )
    async with clock.autojump():
        report = await p.run()
    assert [{"id": i, "score": i * 2} for i in range(300)] == sink.values
    assert {} == report.dead_lettered
    assert report.breaker_trips >= 1
    assert seen_open
    assert seen_open[0] < 30.0
    assert clock.monotonic() >= 30.0


async def test_outage_of_ten_times_the_retry_schedule_dead_letters_no_record(
    tmp_path: Any,
) -> None:
    """A 120 s outage behind a waiting breaker, Retry(attempts=4): every record waits it out."""
    clock = VirtualClock()
    service = FlakyService(clock, failure_rate=0.0)
    service.down_until = 120.0  # the retry deadline is 45 s, its backoff under a second
    breaker = CircuitBreaker(
        "scores",
        BreakerConfig(window_size=20, minimum_calls=10, open_duration=5.0, half_open_probes=2),
        clock=clock,
    )
    dlq = tmp_path / "dlq.jsonl"
    sink = MemorySink()
    p = (
        riprap.Pipeline(
            "outage",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            clock=clock,
            batch_size=20,
            max_in_flight=100,
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
        )
        .source(IterableSource("ids", list(range(100))))
        .map(
            "enrich",
            service.enrich,
            concurrency=8,
            retry=Retry(attempts=4, wait_initial=0.1, wait_max=1.0),
            breaker=breaker,
            on_open="wait",
            bulkhead=Bulkhead(8),
        )
        .sink(sink)
    )
    async with clock.autojump():
        report = await p.run()
    assert [{"id": i, "score": i * 2} for i in range(100)] == sink.values
    assert {} == dict(report.dead_lettered)
    assert clock.monotonic() >= 120.0


async def test_fallback_gives_a_degraded_result_and_is_counted() -> None:
    """When retries run out, the fallback's value goes on and the report counts it."""
    clock = VirtualClock()

    async def always_down(value: int) -> str:
        raise riprap.TransientError("recommendations down")

    def top_ten(error: Exception, value: int) -> str:
        return f"top-10 for {value}"

    sink = MemorySink()
    p = (
        riprap.Pipeline("degrade", checkpoint=riprap.checkpoints.MemoryCheckpoints(), clock=clock)
        .source(IterableSource("users", [1, 2, 3]))
        .map("recommend", always_down, retry=Retry(attempts=2, wait_initial=0.1), fallback=top_ten)
        .sink(sink)
    )
    async with clock.autojump():
        report = await p.run()
    assert ["top-10 for 1", "top-10 for 2", "top-10 for 3"] == sink.values
    assert (3, 3) == (report.fallbacks, report.retries)


async def test_retries_exhausted_go_to_the_dlq_with_reason(tmp_path: Any) -> None:
    """A transient error that outlives its retries is dead-lettered as retries_exhausted."""
    clock = VirtualClock()

    async def sometimes_down(value: int) -> int:
        if value % 10 == 0:
            raise riprap.TransientError("timeout talking to the scorer")
        return value

    sink = MemorySink()
    p = (
        riprap.Pipeline(
            "exhaust",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            clock=clock,
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
        )
        .source(IterableSource("ids", list(range(1, 51))))
        .map("score", sometimes_down, retry=Retry(attempts=3, wait_initial=0.1))
        .sink(sink)
    )
    async with clock.autojump():
        report = await p.run()
    letters = list(riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl"))
    assert [10, 20, 30, 40, 50] == [letter.original_value() for letter in letters]
    assert {"retries_exhausted"} == {letter.reason for letter in letters}
    assert {3} == {letter.attempts for letter in letters}
    assert {"retries_exhausted": 5} == report.dead_lettered
    assert [v for v in range(1, 51) if v % 10] == sink.values


async def test_sink_write_is_retried_by_default() -> None:
    """A sink that fails twice transiently still gets every batch, once."""
    clock = VirtualClock()

    class Hiccup:
        name = "hiccup"
        idempotent = True

        def __init__(self) -> None:
            self.fails = 2
            self.values: list[int] = []

        async def open(self) -> None: ...

        async def write(self, batch: riprap.Batch) -> None:
            if self.fails:
                self.fails -= 1
                raise ConnectionResetError("peer reset")
            self.values.extend(batch.items)

        async def flush(self) -> None: ...

        async def aclose(self) -> None: ...

    sink = Hiccup()
    p = (
        riprap.Pipeline(
            "retry-sink", checkpoint=riprap.checkpoints.MemoryCheckpoints(), clock=clock
        )
        .source(IterableSource("ids", list(range(10))))
        .sink(sink)
    )
    async with clock.autojump():
        report = await p.run()
    assert list(range(10)) == sink.values
    assert 2 == report.retries


def test_bad_policy_arguments_are_named() -> None:
    """Policy arguments of a step are checked when the step is added."""
    p = riprap.Pipeline("p", checkpoint=riprap.checkpoints.MemoryCheckpoints())
    with pytest.raises(riprap.ConfigError, match=r"^map\('m'\)\.retry: must be a Retry"):
        p.map("m", str, retry=3)  # type: ignore[arg-type]
    with pytest.raises(riprap.ConfigError, match=r"^map\('m'\)\.timeout: must be a positive"):
        p.map("m", str, timeout=-1)
    with pytest.raises(riprap.ConfigError, match=r"^map\('m'\)\.on_open: must be 'wait'"):
        p.map("m", str, on_open="later")  # type: ignore[arg-type]
    with pytest.raises(riprap.ConfigError, match=r"^map\('m'\)\.fallback: must be callable"):
        p.map("m", str, fallback="top-10")  # type: ignore[arg-type]  # a value, not a function


async def test_policy_steps_are_not_fused() -> None:
    """An offloaded sync step with a timeout runs on its own, in a worker thread, and works."""
    sink = MemorySink()
    p = (
        riprap.Pipeline("p", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("ids", [1, 2]))
        .map("double", lambda v: v * 2, timeout=5.0, offload="thread")
        .sink(sink)
    )
    await p.run()
    assert [2, 4] == sink.values
    await anyio.lowlevel.checkpoint()


async def test_virtual_time_does_not_run_ahead_of_worker_threads() -> None:
    """A sink working in a thread does not see its virtual attempt timeout expire meanwhile."""
    import time

    clock = VirtualClock()

    class ThreadedSink:
        name = "threaded"
        idempotent = True

        def __init__(self) -> None:
            self.values: list[int] = []

        async def open(self) -> None: ...

        async def write(self, batch: riprap.Batch) -> None:
            await anyio.to_thread.run_sync(time.sleep, 0.02)
            await anyio.lowlevel.checkpoint()
            self.values.extend(batch.items)

        async def flush(self) -> None: ...

        async def aclose(self) -> None: ...

    sink = ThreadedSink()
    p = (
        riprap.Pipeline(
            "threads", checkpoint=riprap.checkpoints.MemoryCheckpoints(), clock=clock, batch_size=5
        )
        .source(IterableSource("ids", list(range(20))))
        .sink(sink, attempt_timeout=60.0)
    )
    async with clock.autojump():
        report = await p.run()
    assert list(range(20)) == sink.values
    assert 0 == report.retries
    assert clock.monotonic() < 60.0


class OutageSink:
    """A sink that refuses every write (connection reset) until ``down_until`` on the clock."""

    name = "warehouse"
    idempotent = True

    def __init__(self, clock: VirtualClock, down_until: float) -> None:
        self.clock = clock
        self.down_until = down_until
        self.values: list[int] = []

    async def open(self) -> None: ...

    async def write(self, batch: riprap.Batch) -> None:
        await self.clock.sleep(0.01)
        if self.clock.monotonic() < self.down_until:
            raise ConnectionResetError("warehouse unavailable")
        self.values.extend(batch.items)

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


def outage_pipeline(
    clock: VirtualClock, sink: OutageSink, tmp_path: Any, **options: Any
) -> riprap.Pipeline:
    """2,000 records, at most 300 in flight, into ``sink``, with a dead-letter store."""
    return (
        riprap.Pipeline(
            "outage",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            clock=clock,
            batch_size=100,
            max_in_flight=300,
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            **options,
        )
        .source(IterableSource("ids", list(range(2_000))))
        .map("double", lambda v: v * 2)
        .sink(sink)
    )


async def test_default_sink_policy_rides_out_a_ten_minute_outage(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A sink down for 10 minutes loses nothing, dead-letters nothing, holds at most
    max_in_flight records meanwhile, logs the outage, and the run completes."""
    clock = VirtualClock()
    sink = OutageSink(clock, down_until=600.0)
    most_in_flight = 0

    async def sample(running: riprap.RunningPipeline) -> None:
        nonlocal most_in_flight
        while True:
            most_in_flight = max(most_in_flight, running.statistics().in_flight)
            await clock.sleep(5.0)

    async with clock.autojump(), anyio.create_task_group() as tg:
        async with outage_pipeline(clock, sink, tmp_path).open() as running:
            tg.start_soon(sample, running)
            report = await running.wait()
        tg.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records if r.name == "riprap.runtime"]
    assert [v * 2 for v in range(2_000)] == sink.values
    assert ("completed", {}) == (report.outcome, dict(report.dead_lettered))
    assert (True, True) == (clock.monotonic() >= 600.0, report.retries > 10)
    assert 300 == most_in_flight
    assert (True, True) == (
        any("sink warehouse failed (ConnectionResetError" in m for m in messages),
        any("sink warehouse recovered after" in m for m in messages),
    )


async def test_a_sink_that_never_recovers_stops_the_run_after_the_outage_timeout(
    tmp_path: Any,
) -> None:
    """Past sink_outage_timeout the run stops with an error naming the sink, blaming no record."""
    clock = VirtualClock()
    backend = riprap.checkpoints.MemoryCheckpoints()
    sink = OutageSink(clock, down_until=float("inf"))
    pipeline = outage_pipeline(clock, sink, tmp_path, sink_outage_timeout=300.0).with_options(
        checkpoint=backend
    )
    async with clock.autojump():
        with pytest.raises(riprap.PipelineError) as info:
            await pipeline.run()
    saved = await backend.load("outage")
    assert saved is not None
    assert ("warehouse", None) == (info.value.stage, info.value.partition)
    assert str(info.value).startswith(
        "pipeline 'outage' stopped: stage 'warehouse' failed: TransientError: sink 'warehouse' "
        "kept failing for "
    )
    assert 29 == int(clock.monotonic() // 10)  # gave up within the last wait before 300 s
    assert ({"memory": 0}, {}) == (dict(saved.positions), dict(saved.crash_counts))


async def test_offloaded_step_times_out_while_its_thread_blocks_and_is_retried() -> None:
    """A blocked offloaded call times out (the loop is free), is retried and counted abandoned."""
    release, finished = threading.Event(), threading.Event()
    calls: list[int] = []

    def lookup(value: int) -> int:
        calls.append(value)
        if calls == [3]:  # the first call for 3 hangs until the test lets it go
            release.wait(10.0)
            finished.set()
        return value * 10

    sink = MemorySink()
    p = (
        riprap.Pipeline("p", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=2)
        .source(IterableSource("ids", [3, 4, 5]))
        .map(
            "lookup",
            lookup,
            offload="thread",
            attempt_timeout=0.05,
            retry=Retry(attempts=3, wait_initial=0.01, wait_max=0.01),
        )
        .sink(sink)
    )
    report = await p.run()
    release.set()
    await wait_until(finished.is_set)
    assert [30, 40, 50] == sink.values
    assert [3, 3, 4, 5] == calls
    assert (1, 1) == (report.retries, report.steps[0].threads_abandoned)


async def test_offloaded_steps_are_not_fused() -> None:
    """An offloaded step runs on its own between fused neighbours, with its own counts."""
    sink = MemorySink()
    p = (
        riprap.Pipeline("p", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("ids", list(range(10))))
        .map("a", lambda v: v + 1)
        .filter("b", lambda v: v % 2 == 0, offload="thread", concurrency=3)
        .flat_map("c", lambda v: (v, -v), offload="thread")
        .map("d", lambda v: v * 10)
        .sink(sink)
    )
    report = await p.run()
    assert [x * 10 for v in range(2, 11, 2) for x in (v, -v)] == sink.values
    assert ["a", "b", "c", "d", "memory"] == [step.step_id for step in report.steps]
