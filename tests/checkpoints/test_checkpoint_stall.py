"""Checkpoints of large stage state leave the event loop free; late intervals are measured."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
import orjson
import pytest

import riprap
import riprap.checkpoints
from riprap.checkpoints import Checkpoint, DeferredState
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.stages.dedupe import Dedupe
from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from pathlib import Path

    from riprap.lowlevel import Emit

pytestmark = pytest.mark.anyio

KEYS = 200_000
"""Keys of the big dedupe: enough that encoding them takes far longer than one GIL slice."""


def backend(kind: str, tmp_path: Path) -> riprap.checkpoints.CheckpointBackend:
    """A fresh checkpoint backend of ``kind``."""
    if kind == "file":
        return riprap.checkpoints.FileCheckpoints(tmp_path)
    if kind == "sqlite":
        return riprap.checkpoints.SqliteCheckpoints(tmp_path / "checkpoints.db")
    return riprap.checkpoints.MemoryCheckpoints()


def context() -> riprap.StageContext:
    """A stage context that refuses dead letters (none are expected)."""

    def dead_letter(batch: riprap.Batch, index: int, error: BaseException, reason: Any) -> None:
        raise AssertionError(f"unexpected dead letter: {error!r}")

    return riprap.StageContext(pipeline="p", clock=riprap.SystemClock(), dead_letter=dead_letter)


async def big_dedupe() -> Dedupe:
    """A dedupe remembering ``KEYS`` keys, as after a long run."""
    stage = Dedupe("dedupe", key="id", max_keys=KEYS)
    keys = [f"key-{i:07d}" for i in range(KEYS)]
    times = [1_700_000_000.0 + i for i in range(KEYS)]
    stage.restore({"version": 2, "keys": keys, "times": times, "watermark": None})
    await stage.open(context())
    return stage


async def feed(stage: Dedupe, ids: list[str]) -> None:
    """Pass ``ids`` through ``stage`` and complete what it emits."""
    out: list[riprap.Batch] = []

    async def emit(batch: riprap.Batch) -> None:
        out.append(batch)

    source = riprap.SourceBatch("p", [{"id": i} for i in ids], start=0)
    await stage.process(riprap.Batch(source.values, riprap.lowlevel.Ack(lambda: None), None), emit)
    for batch in out:
        batch.ack.release()


@final
class Ticker:
    """Counts its turns on the event loop and keeps the longest gap between two."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest = 0.0

    async def run(self) -> None:
        """Yield to the loop over and over until cancelled."""
        last = anyio.current_time()
        while True:
            await anyio.lowlevel.checkpoint()
            now = anyio.current_time()
            self.ticks, self.longest = self.ticks + 1, max(self.longest, now - last)
            last = now


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
async def test_a_big_dedupe_checkpoint_leaves_the_loop_running(kind: str, tmp_path: Path) -> None:
    """Cut and save of 200k keys: the loop keeps turning, no gap near the save's length."""
    stage = await big_dedupe()
    store = backend(kind, tmp_path)
    claim = await store.claim("p", "me")
    ticker = Ticker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        await anyio.lowlevel.checkpoint()
        started = anyio.current_time()
        cut = Checkpoint("p", claim.epoch, "me", seq=1, state={"dedupe": stage.snapshot()})
        await store.save(cut)
        took = anyio.current_time() - started
        tg.cancel_scope.cancel()
    loaded = await store.load("p")
    await store.aclose()
    assert loaded is not None
    assert KEYS == len(loaded.state["dedupe"]["keys"])
    # Before, the cut and the encoding held the loop for the whole save: one gap as long
    # as the save, a handful of turns. Now the encoding shares the GIL in small slices.
    assert (True, True) == (ticker.ticks >= 20, ticker.longest < took / 2), (ticker.ticks, took)


@final
class ThreadSpy:
    """A deferred state that records the thread that built its data."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def materialize(self) -> dict[str, int]:
        """Record the calling thread; the state is a constant."""
        self.threads.append(threading.get_ident())
        return {"n": 1}


@final
class SpyStage:
    """Passes batches on; its snapshot is a :class:`ThreadSpy`."""

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id
        self.spy = ThreadSpy()

    async def process(self, batch: riprap.Batch, emit: Emit) -> None:
        """Pass the batch on."""
        await emit(batch)

    async def finish(self, emit: Emit) -> None:
        """Nothing held back."""

    def snapshot(self) -> DeferredState:
        """The spy (a constant state)."""
        return self.spy

    def restore(self, state: Any) -> None:
        """Nothing to restore."""


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
async def test_deferred_state_is_built_off_the_event_loop_thread(kind: str, tmp_path: Path) -> None:
    """Every backend builds a deferred state's data in a worker thread, never the loop's."""
    stage = SpyStage("spy")
    store = backend(kind, tmp_path)
    p = (
        riprap.Pipeline("p", checkpoint=store, batch_size=1)
        .source(IterableSource("feed", list(range(5))))
        .stage(stage)
        .sink(MemorySink())
    )
    await p.run()
    saved = await store.load("p")
    await store.aclose()
    assert saved is not None
    assert {"n": 1} == saved.state["spy"]
    assert stage.spy.threads
    assert threading.get_ident() not in stage.spy.threads


async def test_a_dedupe_snapshot_is_the_cut_whatever_comes_after() -> None:
    """A snapshot keeps its cut while the stage evicts and adds; unchanged, it is reused."""
    stage = Dedupe("dedupe", key="id", max_keys=3)
    await stage.open(context())
    await feed(stage, ["a", "b", "c"])
    cut = stage.snapshot()
    assert cut is stage.snapshot()  # nothing changed: the checkpointer sees the same object
    await feed(stage, ["d", "e", "a"])  # evicts a, b, c; a comes back
    assert cut is not stage.snapshot()
    await feed(stage, ["f"])
    assert ["a", "b", "c"] == cut.materialize()["keys"]
    assert ["e", "a", "f"] == stage.snapshot().materialize()["keys"]
    encoded = riprap.checkpoints.encode(Checkpoint("p", 1, "me", state={"dedupe": cut}))
    assert ["a", "b", "c"] == orjson.loads(encoded)["state"]["dedupe"]["keys"]


@final
class Pacer:
    """Passes each batch on after ``seconds`` of the pipeline clock (records spread over time)."""

    def __init__(self, seconds: float) -> None:
        self.step_id = "pacer"
        self.seconds = seconds
        self.clock: riprap.Clock | None = None

    async def open(self, context: riprap.StageContext) -> None:
        """Keep the pipeline clock."""
        self.clock = context.clock

    async def process(self, batch: riprap.Batch, emit: Emit) -> None:
        """Wait, then pass the batch on."""
        assert self.clock is not None
        await self.clock.sleep(self.seconds)
        await emit(batch)

    async def finish(self, emit: Emit) -> None:
        """Nothing held back."""

    def snapshot(self) -> None:
        """No state."""

    def restore(self, state: Any) -> None:
        """No state."""


@final
class SlowCheckpoints:
    """Memory checkpoints whose saves take ``seconds`` of the clock (a slow store)."""

    def __init__(self, clock: VirtualClock, seconds: float) -> None:
        self.inner = riprap.checkpoints.MemoryCheckpoints()
        self.clock = clock
        self.seconds = seconds

    async def claim(self, pipeline: str, owner: str) -> riprap.checkpoints.Claim:
        """Claim in the memory store."""
        return await self.inner.claim(pipeline, owner)

    async def save(self, checkpoint: Checkpoint) -> None:
        """Take ``seconds``, then save."""
        await self.clock.sleep(self.seconds)
        await self.inner.save(checkpoint)

    async def load(self, pipeline: str) -> Checkpoint | None:
        """Load from the memory store."""
        return await self.inner.load(pipeline)

    async def aclose(self) -> None:
        """Nothing to release."""


@pytest.mark.parametrize(("save_seconds", "late"), [(0.0, False), (2.5, True)])
async def test_late_checkpoints_are_measured_counted_and_logged_once(
    save_seconds: float, late: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Saves longer than the interval: the real interval is measured, counted, warned once."""
    clock = VirtualClock()
    p = (
        riprap.Pipeline(
            "p",
            checkpoint=SlowCheckpoints(clock, save_seconds),
            checkpoint_interval=1.0,
            batch_size=1,
            clock=clock,
        )
        .source(IterableSource("feed", list(range(40))))
        .stage(Pacer(0.5))
        .sink(MemorySink())
    )
    with caplog.at_level(logging.WARNING, logger="riprap.checkpoint"):
        async with clock.autojump(), p.open() as running:
            await running.wait()
            stats = running.statistics().checkpoint
    warnings = [r for r in caplog.records if "checkpoints come" in r.getMessage()]
    expected_interval = 1.0 + save_seconds  # the sleep, then the save, then the next sleep
    assert (expected_interval, late, int(late)) == (
        stats.last_interval,
        stats.late > 2,
        len(warnings),
    )


async def test_a_dedupe_restores_the_pairs_of_format_version_1() -> None:
    """A state saved before version 2 (``[key, time]`` pairs) restores, oldest first."""
    stage = Dedupe("dedupe", key="id", max_keys=2)
    stage.restore({"version": 1, "keys": [["a", 1.0], ["b", 2.0]], "watermark": None})
    await stage.open(context())
    await feed(stage, ["c"])  # evicts a
    state = stage.snapshot().materialize()
    assert (["b", "c"], 2.0) == (state["keys"], state["times"][0])
