"""The SQLite state store: reconciled with the checkpoint on start, never silently wrong."""

from __future__ import annotations

import gc
import shutil
import sqlite3
from typing import TYPE_CHECKING, Any, final

import pytest

import riprap
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.state import SqliteStore, StateStoreError
from riprap.testing import VirtualClock, run_pipeline

from .test_state_map import count, counting, expected_counts, key_of

if TYPE_CHECKING:
    from pathlib import Path

    from riprap.checkpoints import Checkpoint, CheckpointBackend, Claim

pytestmark = pytest.mark.anyio


async def run_counts(
    values: list[int],
    store: SqliteStore,
    checkpoints: CheckpointBackend,
    clock: VirtualClock | None = None,
) -> Any:
    """Run the running count to the end; its databases are closed when this returns."""
    sink = MemorySink()
    pipeline = counting(values, store, sink, checkpoint=checkpoints, checkpoint_interval=0.05)
    await run_pipeline(pipeline, clock=clock)
    del pipeline
    gc.collect()  # the stage and its connections go with the pipeline
    return sink.values


def databases(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.db"))


def delete_databases(directory: Path) -> None:
    """Delete every database under ``directory`` with its -wal and -shm files."""
    for path in directory.rglob("*.db*"):
        path.unlink()


async def test_a_deleted_store_is_detected(tmp_path: Path) -> None:
    """A database deleted between runs stops the next run with a StateStoreError."""
    store, checkpoints = SqliteStore(tmp_path / "state"), MemoryCheckpoints()
    await run_counts(list(range(100)), store, checkpoints)
    delete_databases(tmp_path)
    with pytest.raises(StateStoreError, match="is missing, but the checkpoint expects"):
        await run_counts(list(range(200)), store, checkpoints)


async def test_a_store_rolled_back_to_an_older_copy_is_detected(tmp_path: Path) -> None:
    """A database put back from an earlier copy is behind the checkpoint: refused."""
    store, checkpoints = SqliteStore(tmp_path / "state"), MemoryCheckpoints()
    values = list(range(100))
    await run_counts(values, store, checkpoints)
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "state", backup)
    values.extend(range(100, 200))
    await run_counts(values, store, checkpoints)
    shutil.rmtree(tmp_path / "state")
    shutil.copytree(backup, tmp_path / "state")
    with pytest.raises(StateStoreError, match="behind the checkpoint's commit"):
        await run_counts(values, store, checkpoints)


async def test_undo_records_are_dropped_once_a_checkpoint_covers_them(tmp_path: Path) -> None:
    """After many checkpoints, a database keeps undo records of its last few commits only."""
    clock = VirtualClock()

    async def pace(value: int) -> int:
        await clock.sleep(0.01)  # so that periodic checkpoints fall in between
        return value

    values = list(range(400))
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "counts", checkpoint=MemoryCheckpoints(), batch_size=10, checkpoint_interval=0.05
        )
        .source(IterableSource("numbers", values, keys=key_of))
        .map("pace", pace)
        .map("count", count, state=SqliteStore(tmp_path / "state"))
        .sink(sink)
    )
    await run_pipeline(pipeline, clock=clock)
    assert expected_counts(values) == sink.values
    [path] = databases(tmp_path)
    db = sqlite3.connect(path)
    head = int(db.execute("SELECT value FROM meta WHERE name = 'head'").fetchone()[0])
    kept = db.execute("SELECT COUNT(*) FROM commits").fetchone()[0]
    db.close()
    assert head > 20
    assert kept <= 3


def test_a_store_ahead_of_the_checkpoint_is_rolled_back(tmp_path: Path) -> None:
    """Commits written after the checkpoint's cut (its save lost) are undone on start."""
    store = SqliteStore(tmp_path)
    parts = store.open(pipeline="p", step_id="s", restored=None)
    parts.partition("p0").apply({"s:a": ("1", None), "s:gone": ("0", None)}, 5, 0.0)
    saved = parts.snapshot(0.0)
    parts.partition("p0").apply({"s:a": ("2", None), "s:b": ("9", None), "s:gone": None}, 9, 0.0)
    parts.close()
    again = store.open(pipeline="p", step_id="s", restored=saved)
    found = [again.partition("p0").read(token) for token in ("s:a", "s:b", "s:gone")]
    assert [("1", None), None, ("0", None)] == found
    assert saved == again.snapshot(0.0)
    again.close()


def test_a_store_ahead_beyond_its_undo_records_is_refused(tmp_path: Path) -> None:
    """Once a later checkpoint was known saved, going back to an older one is refused."""
    store = SqliteStore(tmp_path)
    parts = store.open(pipeline="p", step_id="s", restored=None)
    parts.partition("p0").apply({"s:a": ("1", None)}, 5, 0.0)
    old = parts.snapshot(0.0)
    parts.partition("p0").apply({"s:a": ("2", None)}, 9, 0.0)
    parts.confirmed({"p0": 2})
    parts.partition("p0").apply({"s:a": ("3", None)}, 12, 0.0)
    parts.close()
    with pytest.raises(StateStoreError, match="no longer has the undo records"):
        store.open(pipeline="p", step_id="s", restored=old)


def test_a_store_of_a_run_whose_checkpoint_never_saved_is_emptied(tmp_path: Path) -> None:
    """A database the checkpoint knows nothing of, with every undo record, goes back to empty."""
    store = SqliteStore(tmp_path)
    parts = store.open(pipeline="p", step_id="s", restored=None)
    parts.partition("p0").apply({"s:a": ("1", None)}, 5, 0.0)
    parts.close()
    again = store.open(pipeline="p", step_id="s", restored=None)
    assert (None, {}) == (again.partition("p0").read("s:a"), again.commits())
    again.close()


def test_a_store_of_another_partition_is_refused(tmp_path: Path) -> None:
    """A database copied over another partition's file is caught by its own record."""
    store = SqliteStore(tmp_path)
    parts = store.open(pipeline="p", step_id="s", restored=None)
    parts.partition("p0").apply({"s:a": ("1", None)}, 5, 0.0)
    parts.partition("p1").apply({"s:a": ("7", None)}, 5, 0.0)
    saved = parts.snapshot(0.0)
    parts.close()
    first, second = databases(tmp_path)
    shutil.copyfile(first, second)
    for path in tmp_path.rglob("*.db-*"):
        path.unlink()
    with pytest.raises(StateStoreError, match="belongs to"):
        store.open(pipeline="p", step_id="s", restored=saved)


def test_state_of_a_memory_store_is_refused(tmp_path: Path) -> None:
    """A checkpoint holding memory-store state is not taken by an SQLite store."""
    with pytest.raises(StateStoreError, match="'memory' store"):
        SqliteStore(tmp_path).open(
            pipeline="p", step_id="s", restored={"store": "memory", "partitions": {}}
        )


def test_each_partition_has_its_own_private_file(tmp_path: Path) -> None:
    """Partitions with odd names get separate files, readable only by their owner."""
    store = SqliteStore(tmp_path)
    parts = store.open(pipeline="p", step_id="s", restored=None)
    for name in ("orders:0", "orders/1", "a" * 300):
        parts.partition(name).apply({"s:a": ("1", None)}, 1, 0.0)
    parts.close()
    paths = databases(tmp_path / "p" / "s")
    assert 3 == len(paths)
    assert {0o600} == {path.stat().st_mode & 0o777 for path in paths}


@final
class LosesTheLastSave:
    """A memory checkpoint store that drops the final save of a run, as a crash just before it."""

    def __init__(self, inner: MemoryCheckpoints) -> None:
        self.inner = inner

    async def claim(self, pipeline: str, owner: str) -> Claim:
        return await self.inner.claim(pipeline, owner)

    async def save(self, checkpoint: Checkpoint) -> None:
        if checkpoint.guard.running:  # the final save marks the run as ended: lose that one
            await self.inner.save(checkpoint)

    async def load(self, pipeline: str) -> Checkpoint | None:
        return await self.inner.load(pipeline)

    async def aclose(self) -> None:
        await self.inner.aclose()


def paced_counts(
    values: list[int], store: SqliteStore, checkpoints: CheckpointBackend, clock: VirtualClock
) -> tuple[riprap.Pipeline, MemorySink]:
    """The running count with a step that takes virtual time, so that checkpoints fall between."""

    async def pace(value: int) -> int:
        await clock.sleep(0.01)
        return value

    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("counts", checkpoint=checkpoints, batch_size=10, checkpoint_interval=0.05)
        .source(IterableSource("numbers", values, keys=key_of))
        .map("pace", pace)
        .map("count", count, state=store)
        .sink(sink)
    )
    return pipeline, sink


async def test_a_store_ahead_of_a_lost_save_is_rolled_back_and_counts_stay_exact(
    tmp_path: Path,
) -> None:
    """The store commits at the final cut, the save is lost: the next run undoes that commit."""
    values = list(range(300))
    store, saved = SqliteStore(tmp_path / "state"), MemoryCheckpoints()
    clock = VirtualClock()
    first, _ = paced_counts(values, store, LosesTheLastSave(saved), clock)
    await run_pipeline(first, clock=clock)
    del first
    gc.collect()
    checkpoint = await saved.load("counts")
    assert checkpoint is not None
    [path] = databases(tmp_path)
    db = sqlite3.connect(path)
    head = int(db.execute("SELECT value FROM meta WHERE name = 'head'").fetchone()[0])
    db.close()
    assert head > checkpoint.state["count"]["partitions"]["memory"]["commit"]  # ahead
    clock = VirtualClock()
    again, sink = paced_counts(values, store, saved, clock)
    await run_pipeline(again, clock=clock)
    assert expected_counts(values)[checkpoint.positions["memory"] :] == sink.values


@final
class RecordingLog:
    """The run's side of a changelog, as keyed state sees it: it takes the cut's changes."""

    def __init__(self) -> None:
        self.staged: dict[str, dict[str, Any]] = {}

    def attach(self, step_id: str, owner: Any) -> None:
        """Nothing to remember: the test moves partitions itself."""

    def require(self, step_id: str, partition: str) -> None:
        """Every partition the test uses was loaded."""

    def stage(self, step_id: str, partition: str, changes: Any) -> None:
        self.staged.setdefault(partition, {}).update(changes)


async def test_a_local_copy_commits_in_a_thread_while_the_loop_goes_on(tmp_path: Path) -> None:
    """Writing a commit to a changelog's local copy never holds the event loop."""
    import anyio

    from riprap.lowlevel import Ack, SourceOrigin
    from riprap.state import KeyedState

    keyed = KeyedState(SqliteStore(tmp_path))
    changelog = RecordingLog()
    context = riprap.StageContext(
        pipeline="p",
        clock=VirtualClock(),
        dead_letter=lambda batch, index, error, reason: None,
        positions=lambda: {"t:0": 10**9},
        state_log=changelog,
    )
    keyed.open(context, "count")
    keyed.load("t:0", {}, complete=True, offset=0, position=0)
    keys = 50_000
    source = riprap.SourceBatch("t:0", [None] * keys, start=0, keys=[f"k{i}" for i in range(keys)])
    batch = riprap.Batch([None] * keys, Ack(lambda: None), SourceOrigin(source))
    for index in range(keys):
        keyed.state(batch, index).set(index)
    keyed.snapshot()  # the cut: the changes wait in memory for the changelog
    assert keys == len(changelog.staged["t:0"])

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(10_000_000):
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        started = ticks
        await keyed.logged("t:0", 7, 10**9)
        during = ticks - started
        tg.cancel_scope.cancel()
    assert during > 0, "the loop was held while the commit was written"
    assert 12_345 == keyed.state(batch, 12_345).get()  # read back from the database
    databases = [path async for path in anyio.Path(tmp_path).rglob("*.db")]
    rows = sqlite3.connect(str(databases[0])).execute("SELECT COUNT(*) FROM state")
    assert (keys,) == rows.fetchone()
    keyed.release("t:0")
