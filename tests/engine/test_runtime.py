"""The runtime end to end on in-memory parts: results, order, resume, stop, backpressure."""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

import riprap
import riprap.checkpoints
import riprap.testing
from riprap.connectors.memory import IterableSource, MemorySink

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio


def pipeline(name: str = "p", **options: Any) -> riprap.Pipeline:
    """A pipeline with in-memory checkpoints unless told otherwise."""
    options.setdefault("checkpoint", riprap.checkpoints.MemoryCheckpoints())
    return riprap.Pipeline(name, **options)


async def test_fused_steps_produce_reference_output() -> None:
    """map/filter/flat_map/batch give the same values as plain Python, with counts."""
    sink = MemorySink()
    p = (
        pipeline(batch_size=7, max_in_flight=21)
        .source(IterableSource("nums", list(range(100))))
        .map("double", lambda v: v * 2)
        .filter("not_tens", lambda v: v % 10 != 0)
        .flat_map("pair", lambda v: [v, -v])
        .batch("groups", 6)
        .flat_map("ungroup", lambda group: group)
        .sink(sink)
    )
    report = await p.run()
    expected = [x for v in range(100) if (v * 2) % 10 != 0 for x in (v * 2, -v * 2)]
    assert expected == sink.values
    assert (100, len(expected), 20) == (report.records_in, report.records_out, report.dropped)
    assert {"memory": 100} == report.positions
    assert "completed" == report.outcome


async def test_async_step_keeps_input_order() -> None:
    """An async step with concurrency returns results in input order."""

    async def slow_square(v: int) -> int:
        await anyio.sleep(0.001 * (v % 3))
        return v * v

    sink = MemorySink()
    p = (
        pipeline(batch_size=50)
        .source(IterableSource("nums", list(range(200))))
        .map("square", slow_square, concurrency=16)
        .sink(sink)
    )
    await p.run()
    assert [v * v for v in range(200)] == sink.values


async def test_unordered_async_step_keeps_every_record() -> None:
    """An unordered async filter emits in completion order but loses nothing."""

    async def keep_odd(v: int) -> bool:
        await anyio.sleep(0.001 * (v % 4))
        return v % 2 == 1

    sink = MemorySink(keep_records=True)
    p = (
        pipeline(batch_size=40)
        .source(IterableSource("nums", list(range(120))))
        .filter("odd", keep_odd, concurrency=8, ordered=False)
        .sink(sink)
    )
    await p.run()
    assert list(range(1, 120, 2)) == sorted(sink.values)
    assert [r.value for r in sink.records] == [r.offset for r in sink.records]


async def test_record_step_sees_metadata() -> None:
    """A step with record=True receives the record with its key, partition and offset."""
    sink = MemorySink()
    p = (
        pipeline()
        .source(IterableSource("letters", ["a", "b", "c"], keys=["k0", "k1", "k2"]))
        .map("describe", lambda r: f"{r.key}:{r.partition}:{r.offset}:{r.value}", record=True)
        .sink(sink)
    )
    await p.run()
    assert ["k0:memory:0:a", "k1:memory:1:b", "k2:memory:2:c"] == sink.values


async def test_bug_stops_run_with_position_and_counts_crash() -> None:
    """An unexpected exception names stage and position; done records stay checkpointed."""
    backend = riprap.checkpoints.MemoryCheckpoints()

    def explode_at_42(v: int) -> int:
        if v == 42:
            raise KeyError("boom")
        return v

    p = (
        pipeline(checkpoint=backend, batch_size=10, max_in_flight=10)
        .source(IterableSource("nums", list(range(100))))
        .map("explode", explode_at_42)
        .sink(MemorySink())
    )
    with pytest.raises(riprap.PipelineError) as info:
        await p.run()
    assert "pipeline 'p' stopped: stage 'explode' failed at memory@42: KeyError: 'boom'" == str(
        info.value
    )
    saved = await backend.load("p")
    assert saved is not None
    assert {"memory": 40} == dict(saved.positions)
    assert {"memory@42": 1} == dict(saved.crash_counts)


async def test_resume_after_failure_completes_exactly_once_in_idempotent_sink() -> None:
    """A failed run resumes from its checkpoint; an upserting sink ends with each record once."""
    backend = riprap.checkpoints.MemoryCheckpoints()
    table: dict[int, int] = {}
    fail = {"on": True}

    class UpsertSink:
        name = "upsert"
        idempotent = True

        async def open(self) -> None: ...

        async def write(self, batch: riprap.Batch) -> None:
            for v in batch.items:
                if fail["on"] and v == 500:
                    raise ConnectionResetError("sink went away")
                table[v] = table.get(v, 0) + 1

        async def flush(self) -> None: ...

        async def aclose(self) -> None: ...

    def build() -> riprap.Pipeline:
        return (
            pipeline(checkpoint=backend, batch_size=100, max_in_flight=300)
            .source(IterableSource("nums", list(range(1000))))
            .sink(UpsertSink(), retry=None)  # no outage to ride out: stop at once
        )

    with pytest.raises(riprap.PipelineError, match=r"stage 'upsert' failed: .* kept failing"):
        await build().run()
    fail["on"] = False
    report = await build().run()
    assert set(range(1000)) == set(table)
    assert 500 == report.records_in
    assert {"memory": 1000} == report.positions


async def test_stop_drains_and_checkpoints_exactly_what_was_written() -> None:
    """A graceful stop of an endless source leaves the checkpoint equal to what the sink got."""
    backend = riprap.checkpoints.MemoryCheckpoints()
    sink = MemorySink()
    p = (
        pipeline(checkpoint=backend, batch_size=10, max_in_flight=50)
        .source(IterableSource("count", itertools.count()))
        .map("inc", lambda v: v + 1)
        .sink(sink)
    )
    async with p.open() as running:
        with anyio.fail_after(10):
            while len(sink.values) < 200:
                await anyio.lowlevel.checkpoint()
        running.stop()
        report = await running.wait()
    assert "stopped" == report.outcome
    assert list(range(1, len(sink.values) + 1)) == sink.values
    saved = await backend.load("p")
    assert saved is not None
    assert {"memory": len(sink.values)} == dict(saved.positions)


class StuckSink:
    """A sink whose every write waits forever."""

    name = "stuck"
    idempotent = False

    async def open(self) -> None: ...

    async def write(self, batch: riprap.Batch) -> None:
        await anyio.sleep_forever()

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


async def test_backpressure_bounds_records_in_flight() -> None:
    """With a sink that never finishes, records in flight stop at the configured bound."""
    generated = 0

    def endless() -> Iterator[int]:
        nonlocal generated
        for i in range(10_000_000):
            generated += 1
            yield i

    p = (
        pipeline(batch_size=100, max_in_flight=1_000, queue_size=50, drain_timeout=0)
        .source(IterableSource("endless", endless()))
        .map("inc", lambda v: v + 1)
        .sink(StuckSink())
    )
    async with p.open() as running:
        for _ in range(50):
            await anyio.wait_all_tasks_blocked()
        stats = running.statistics()
        assert (1_000, 1_000) == (stats.in_flight, stats.records_in)
        assert 1_000 == generated
        running.abort()


@pytest.mark.parametrize(("queue_size", "read"), [(None, 1_020), (4, 60)])
async def test_queues_of_small_batches_hold_a_thousand_records_by_default(
    queue_size: int | None, read: int
) -> None:
    """Batches of 10 queue 100 deep by default (1,000 records), as deep as told otherwise.

    With a sink stuck in a write, the source reads what the queue holds, the
    batch in the write and the one it waits to send.
    """
    p = (
        pipeline(batch_size=10, queue_size=queue_size, drain_timeout=0)
        .source(IterableSource("numbers", list(range(100_000))))
        .map("inc", lambda v: v + 1)
        .sink(StuckSink())
    )
    assert (100 if queue_size is None else queue_size) == p.options.queue_batches
    async with p.open() as running:
        for _ in range(50):
            await anyio.wait_all_tasks_blocked()
        assert read == running.statistics().records_in
        running.abort()


class ManualClock:
    """A clock that moves only when the test ticks it; sleeps end at their deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self._moved = anyio.Event()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        deadline = self.now + seconds
        while self.now < deadline:
            await self._moved.wait()

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds
        event, self._moved = self._moved, anyio.Event()
        event.set()


class SlowBackend:
    """Memory checkpoints whose saves wait until released; counts concurrent saves.

    The first save, the start-up mark a run writes before any record moves,
    goes through at once: like the claim, it is part of starting.
    """

    def __init__(self) -> None:
        self.inner = riprap.checkpoints.MemoryCheckpoints()
        self.release = anyio.Event()
        self.active = 0
        self.max_active = 0
        self.started = 0
        self.passed = 0

    async def claim(self, pipeline: str, owner: str) -> riprap.checkpoints.Claim:
        return await self.inner.claim(pipeline, owner)

    async def save(self, checkpoint: riprap.checkpoints.Checkpoint) -> None:
        if not self.passed:
            self.passed += 1
            await self.inner.save(checkpoint)
            return
        self.started += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.release.wait()
            await self.inner.save(checkpoint)
        finally:
            self.active -= 1

    async def load(self, pipeline: str) -> riprap.checkpoints.Checkpoint | None:
        return await self.inner.load(pipeline)

    async def aclose(self) -> None: ...


async def test_slow_checkpoint_neither_piles_up_nor_stalls_processing() -> None:
    """While a save hangs, records keep reaching the sink and no second save starts."""
    clock = ManualClock()
    backend = SlowBackend()
    sink = MemorySink()
    p = (
        pipeline(
            checkpoint=backend,
            clock=clock,
            checkpoint_interval=1.0,
            batch_size=100,
            max_in_flight=1_000,
        )
        .source(IterableSource("count", itertools.count()))
        .sink(sink)
    )
    async with p.open() as running:
        with anyio.fail_after(10):
            while backend.active == 0:
                clock.tick()  # the first periodic save starts and hangs
                await anyio.lowlevel.checkpoint()
            seen = len(sink.values)
            while len(sink.values) < seen + 20_000:
                await anyio.lowlevel.checkpoint()
        for _ in range(3):
            clock.tick()  # the save is still running: nothing queues behind it
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
        assert (1, 1) == (backend.started, backend.max_active)
        running.stop()
        backend.release.set()
        report = await running.wait()
    assert 1 == backend.max_active
    assert list(range(len(sink.values))) == sink.values
    assert {"memory": len(sink.values)} == report.positions


async def test_zombie_run_is_fenced() -> None:
    """When a second owner claims the pipeline, the first run's next checkpoint is refused."""
    backend = riprap.checkpoints.MemoryCheckpoints()
    sink = MemorySink()
    p = (
        pipeline(checkpoint=backend, batch_size=10, max_in_flight=10)
        .source(IterableSource("count", itertools.count()))
        .sink(sink)
    )

    async def run_until_fenced() -> None:
        async with p.open() as running:
            with anyio.fail_after(10):
                while len(sink.values) < 50:
                    await anyio.lowlevel.checkpoint()
            await backend.claim("p", "newcomer")
            await running.checkpoint()

    with pytest.raises(riprap.checkpoints.FencedError):
        await run_until_fenced()


async def test_custom_stage_state_is_checkpointed_and_restored() -> None:
    """A stage's snapshot is saved with the positions and handed back on the next run."""

    class Counter:
        step_id = "counter"

        def __init__(self) -> None:
            self.seen = 0

        async def process(self, batch: riprap.Batch, emit: Any) -> None:
            self.seen += len(batch.items)
            await emit(batch)

        async def finish(self, emit: Any) -> None: ...

        def snapshot(self) -> Any:
            return {"seen": self.seen}

        def restore(self, state: Any) -> None:
            self.seen = state["seen"]

    backend = riprap.checkpoints.MemoryCheckpoints()
    first, second = Counter(), Counter()
    for stage, values in ((first, list(range(30))), (second, list(range(50)))):
        p = (
            pipeline(checkpoint=backend)
            .source(IterableSource("nums", values))
            .stage(stage)
            .sink(MemorySink())
        )
        await p.run()
    assert (30, 50) == (first.seen, second.seen)
    saved = await backend.load("p")
    assert saved is not None
    assert {"counter": {"seen": 50}} == dict(saved.state)


async def test_a_checkpoint_builds_operator_state_once() -> None:
    """Each save asks every stage for its snapshot once: state may be large, and a second
    walk over it would hold the event loop twice as long."""

    class Counted:
        step_id = "counted"

        def __init__(self) -> None:
            self.snapshots = 0
            self.seen = 0

        async def process(self, batch: riprap.Batch, emit: Any) -> None:
            self.seen += len(batch.items)
            await emit(batch)

        async def finish(self, emit: Any) -> None: ...

        def snapshot(self) -> Any:
            self.snapshots += 1
            return {"seen": self.seen}

        def restore(self, state: Any) -> None:
            self.seen = state["seen"]

    stage = Counted()
    p = pipeline().source(IterableSource("nums", list(range(10)))).stage(stage).sink(MemorySink())
    report = await p.run()
    assert report.checkpoints >= 1
    assert report.checkpoints == stage.snapshots


async def test_failure_does_not_cancel_the_embedding_block() -> None:
    """A failing run leaves the host's block running; wait() and leaving the block raise."""
    steps: list[str] = []
    p = (
        pipeline()
        .source(IterableSource("nums", list(range(10))))
        .map("boom", lambda v: 1 // (v - 5))
        .sink(MemorySink())
    )

    async def host() -> None:
        async with p.open() as running:
            with pytest.raises(riprap.PipelineError, match="memory@5"):
                await running.wait()
            await anyio.sleep(0.001)  # would raise if the block had been cancelled
            steps.append("body finished")
            assert isinstance(running.error, riprap.PipelineError)

    with pytest.raises(riprap.PipelineError, match="memory@5"):
        await host()
    assert ["body finished"] == steps


async def test_keyed_step_runs_one_record_per_key_at_a_time() -> None:
    """With key=, records of a key never overlap and keep their order; keys run concurrently."""
    active: dict[str, int] = {}
    overlap: list[str] = []
    seen: list[tuple[str, int]] = []
    peak = 0

    async def handle(value: tuple[str, int]) -> tuple[str, int]:
        nonlocal peak
        key, n = value
        active[key] = active.get(key, 0) + 1
        if active[key] > 1:
            overlap.append(key)
        peak = max(peak, sum(active.values()))
        await anyio.sleep(0.001 * (n % 3))
        seen.append(value)
        active[key] -= 1
        return value

    values = [(f"k{i % 4}", i) for i in range(80)]
    sink = MemorySink()
    p = (
        pipeline(batch_size=40)
        .source(IterableSource("events", values))
        .map("handle", handle, concurrency=8, key=lambda v: v[0])
        .sink(sink)
    )
    await p.run()
    assert [] == overlap
    assert values == sink.values
    for key in ("k0", "k1", "k2", "k3"):
        assert [v for v in values if v[0] == key] == [v for v in seen if v[0] == key]
    assert peak > 1


def test_run_raises_the_pipeline_error_itself() -> None:
    """riprap.run raises PipelineError unwrapped, so ``except riprap.PipelineError`` works."""
    p = (
        pipeline()
        .source(IterableSource("nums", list(range(10))))
        .map("boom", lambda v: 1 // (v - 3))
        .sink(MemorySink())
    )
    with pytest.raises(riprap.PipelineError, match="memory@3"):
        riprap.run(p, handle_signals=False)


async def test_a_sync_step_blocking_the_loop_is_named_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync step that blocks the event loop is logged by name and counted as a stall."""

    def block(value: int) -> int:
        if value == 2:
            time.sleep(0.3)  # blocks the loop: what the monitor is there to see
        return value

    p = (
        pipeline(loop_lag_threshold=0.15, batch_size=1, max_in_flight=10)
        .source(IterableSource("endless", itertools.count()))
        .map("block", block)
        .sink(MemorySink())
    )
    with caplog.at_level(logging.WARNING, logger="riprap.runtime"):
        async with p.open() as running:
            await riprap.testing.wait_until(lambda: running.statistics().loop.stalls)
            running.stop()
            await running.wait()
            stats = running.statistics()
            metric = running.metrics_registry.get_sample_value(
                "riprap_event_loop_stalls_total", {"pipeline": "p", "stage": "block"}
            )
    lines = [r.getMessage() for r in caplog.records if getattr(r, "stage", None) == "block"]
    assert ["block"] == [step for step in stats.loop.stalls if step == "block"]
    assert float(stats.loop.stalls["block"]) == metric
    prefix = "pipeline p: step block held the event loop for "
    assert prefix == lines[0][: len(prefix)]
