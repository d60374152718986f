"""Dedupe: repeats dropped, state checkpointed, replays and crashes reach the sink once."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, final

import anyio.lowlevel
import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.lowlevel
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.connectors.sqlite import SqliteSink, read_table
from riprap.lowlevel import SourceOrigin
from riprap.stages.dedupe import Dedupe
from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

RECORDS = 100_000


def delivery(n: int) -> dict[str, Any]:
    """The ``n``-th delivery: every tenth repeats the one before it (a duplicated delivery)."""
    return {"id": n // 10 * 9 + min(n % 10, 8), "n": n}


UNIQUE = len({delivery(n)["id"] for n in range(RECORDS)})


@final
class CountingSink:
    """Counts how often each ``id`` is written; not idempotent, so duplicates show."""

    def __init__(self) -> None:
        self.name = "counting"
        self.idempotent = False
        self.counts: collections.Counter[Any] = collections.Counter()

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def write(self, batch: riprap.Batch) -> None:
        await anyio.lowlevel.checkpoint()
        self.counts.update(value["id"] for value in batch.items)

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


def dedupe_pipeline(
    tmp_path: Path,
    backend: riprap.checkpoints.CheckpointBackend,
    source: riprap.Source,
    sink: riprap.Sink,
    *,
    fail_at: int | None = None,
) -> riprap.Pipeline:
    """What a process would build on each start: a fresh Dedupe, state from the checkpoint."""

    def after(value: dict[str, Any]) -> dict[str, Any]:
        if value["id"] == fail_at:
            raise RuntimeError("bug in a step after dedupe")
        return value

    return (
        riprap.Pipeline(
            "deliveries",
            checkpoint=backend,
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
        )
        .source(source)
        .stage(Dedupe("dedupe", key="id", max_keys=200_000))
        .map("after", after)
        .sink(sink)
    )


async def test_replays_and_a_crash_reach_the_sink_once(tmp_path: Path) -> None:
    """A crash mid-run, its restart and a full replay from zero write each key exactly once."""
    values = [delivery(n) for n in range(RECORDS)]
    backend = riprap.checkpoints.MemoryCheckpoints()
    sink = CountingSink()
    crashing = dedupe_pipeline(
        tmp_path, backend, IterableSource("feed", values, partition="a"), sink, fail_at=45_000
    )
    with pytest.raises(riprap.PipelineError, match="bug in a step after dedupe"):
        await crashing.run()
    assert 0 < sum(sink.counts.values()) < UNIQUE
    for partition in ("a", "b"):  # restart of the crashed run, then a source that starts over
        source = IterableSource("feed", values, partition=partition)
        report = await dedupe_pipeline(tmp_path, backend, source, sink).run()
        assert "completed" == report.outcome
    assert (UNIQUE, {1}) == (len(sink.counts), set(sink.counts.values()))
    saved = await backend.load("deliveries")
    assert saved is not None
    assert ({"a": RECORDS, "b": RECORDS}, UNIQUE) == (
        dict(saved.positions),
        len(saved.state["dedupe"]["keys"]),
    )


@final
class LosingCheckpoints:
    """Forwards to a backend but drops every save while ``losing``: a process killed first."""

    def __init__(self) -> None:
        self.backend = riprap.checkpoints.MemoryCheckpoints()
        self.losing = False

    async def claim(self, pipeline: str, owner: str) -> riprap.checkpoints.Claim:
        return await self.backend.claim(pipeline, owner)

    async def save(self, checkpoint: riprap.checkpoints.Checkpoint) -> None:
        if not self.losing:
            await self.backend.save(checkpoint)

    async def load(self, pipeline: str) -> riprap.checkpoints.Checkpoint | None:
        return await self.backend.load(pipeline)

    async def aclose(self) -> None:
        await self.backend.aclose()


async def test_lost_checkpoint_replays_are_absorbed_by_the_sqlite_sink(tmp_path: Path) -> None:
    """When a run's checkpoints are lost, the replay is deduped again and upserts the same rows."""
    values = [delivery(n) for n in range(20_000)]
    unique = len({v["id"] for v in values})
    backend = LosingCheckpoints()
    database = tmp_path / "out.db"
    for losing in (True, False):
        backend.losing = losing
        sink = SqliteSink(database, table="deliveries", key="id")
        source = IterableSource("feed", values, partition="a")
        await dedupe_pipeline(tmp_path, backend, source, sink).run()
    rows = await read_table(database, "deliveries")
    assert unique == len(rows)
    assert sorted(rows) == sorted({v["id"] for v in values})


async def test_ttl_expiry_lets_a_key_through_again() -> None:
    """With a time function, a repeat within the ttl is dropped and one at the ttl goes through."""
    values = [{"k": "a", "t": t} for t in (0, 5, 9.5, 10, 15, 21)] + [{"k": "b", "t": 22}]
    sink = MemorySink()
    stage = Dedupe("dedupe", key="k", ttl=10, time=lambda v: v["t"])
    p = (
        riprap.Pipeline("ttl", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("feed", values))
        .stage(stage)
        .sink(sink)
    )
    await p.run()
    assert [("a", 0), ("a", 10), ("a", 21), ("b", 22)] == [(v["k"], v["t"]) for v in sink.values]
    assert (7, 3, 0) == (
        stage.statistics().records_in,
        stage.statistics().duplicates,
        stage.statistics().evicted,
    )


async def test_clock_ttl_survives_a_restart_and_expires() -> None:
    """On the clock, a key saved by one run is dropped by the next until its ttl has passed."""
    clock = VirtualClock()
    backend = riprap.checkpoints.MemoryCheckpoints()
    written: list[list[Any]] = []
    for step in (0.0, 30.0, 31.0):
        clock.advance(step)
        sink = MemorySink()
        p = (
            riprap.Pipeline("clock", checkpoint=backend, clock=clock)
            .source(IterableSource("feed", ["a", "b"], partition=f"run-{len(written)}"))
            .stage(Dedupe("dedupe", key=lambda v: v, ttl=60))
            .sink(sink)
        )
        await p.run()
        written.append(sink.values)
    assert [["a", "b"], [], ["a", "b"]] == written


async def test_max_keys_bound_forgets_the_oldest_key() -> None:
    """At most max_keys keys are remembered; a key pushed out goes through again."""
    sink = MemorySink()
    stage = Dedupe("dedupe", key=lambda v: v, max_keys=3)
    values = ["a", "b", "c", "a", "d", "b", "a", "e", "a"]
    p = (
        riprap.Pipeline("bound", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=2)
        .source(IterableSource("feed", values))
        .stage(stage)
        .sink(sink)
    )
    await p.run()
    assert ["a", "b", "c", "d", "a", "e"] == sink.values
    assert ["d", "a", "e"] == stage.snapshot().materialize()["keys"]
    assert 3 == stage.statistics().keys


def context(letters: list[tuple[int, str | None]]) -> riprap.StageContext:
    """A stage context whose dead-letter hook records ``(index, reason)``."""

    def dead_letter(batch: riprap.Batch, index: int, error: BaseException, reason: Any) -> None:
        batch.ack.retain()
        letters.append((index, reason or getattr(error, "reason", None)))
        batch.ack.release()

    return riprap.StageContext(pipeline="p", clock=riprap.SystemClock(), dead_letter=dead_letter)


async def test_event_time_comes_from_record_timestamps() -> None:
    """Event time comes from source timestamps; a record without one is dead-lettered."""
    letters: list[tuple[int, str | None]] = []
    stage = Dedupe("dedupe", key="k", ttl=5, time="event")
    await stage.open(context(letters))
    source = riprap.SourceBatch(
        "p", [{"k": 1}, {"k": 1}, {"k": 1}, {"k": 2}], start=0, timestamps=[100, 104, 105, None]
    )
    out: list[riprap.Batch] = []

    async def emit(batch: riprap.Batch) -> None:
        out.append(batch)

    done: list[bool] = []
    await stage.process(
        riprap.Batch(
            source.values, riprap.lowlevel.Ack(lambda: done.append(True)), SourceOrigin(source)
        ),
        emit,
    )
    (batch,) = out
    assert ([{"k": 1}, {"k": 1}], [0, 2]) == (batch.items, [batch.position(i)[1] for i in range(2)])
    assert [(3, "missing_timestamp")] == letters
    assert (1, []) == (stage.statistics().pending, done)
    batch.ack.release()
    assert ([True], 0) == (done, stage.statistics().pending)


async def test_snapshot_is_json_with_string_keys_and_restores() -> None:
    """Keys are saved as str(key) in JSON; only keys of done records are saved."""
    stage = Dedupe("dedupe", key="id", max_keys=10)
    await stage.open(context([]))
    out: list[riprap.Batch] = []

    async def emit(batch: riprap.Batch) -> None:
        out.append(batch)

    for ids in ([1, "1", (2, 3)], [4]):
        source = riprap.SourceBatch("p", [{"id": i} for i in ids], start=0)
        await stage.process(
            riprap.Batch(source.values, riprap.lowlevel.Ack(lambda: None), None), emit
        )
    out[0].ack.release()  # the first batch is written; the second is still in flight
    state = orjson.loads(orjson.dumps(stage.snapshot().materialize()))
    assert ["1", "(2, 3)"] == state["keys"]
    restored = Dedupe("dedupe", key="id", max_keys=10)
    restored.restore(state)
    await restored.open(context([]))
    await restored.process(
        riprap.Batch([{"id": 1}, {"id": 4}], riprap.lowlevel.Ack(lambda: None), None), emit
    )
    assert [{"id": 4}] == out[-1].items


async def test_missing_key_is_dead_lettered(tmp_path: Path) -> None:
    """A record without its key field goes to the DLQ with reason missing_key."""
    sink = MemorySink()
    p = (
        riprap.Pipeline(
            "keys",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
        )
        .source(IterableSource("feed", [{"id": 1}, {"other": 2}, {"id": 1}]))
        .stage(Dedupe("dedupe", key="id", max_keys=10))
        .sink(sink)
    )
    report = await p.run()
    assert ([{"id": 1}], {"missing_key": 1}) == (sink.values, report.dead_lettered)
    (letter,) = riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl")
    assert (1, "dedupe key field 'id' is missing") == (letter.offset, letter.message)


def test_options_are_checked() -> None:
    """No bound, a bad ttl, a bad max_keys or an unknown time source is a ConfigError."""
    bad: list[dict[str, Any]] = [
        {},
        {"ttl": -1},
        {"max_keys": 0},
        {"ttl": 1, "time": "wall"},
    ]
    options = []
    for kwargs in bad:
        with pytest.raises(riprap.ConfigError) as caught:
            Dedupe("dedupe", key="id", **kwargs)
        options.append(caught.value.option)
    assert ["Dedupe", "Dedupe.ttl", "Dedupe.max_keys", "Dedupe.time"] == options


async def test_a_far_future_event_time_is_out_of_range_and_expires_no_key() -> None:
    """With max_skew, a timestamp far ahead is dead-lettered (timestamp_out_of_range) and does
    not move the latest time seen, so the keys before it still catch their repeats."""
    letters: list[tuple[int, str | None]] = []
    stage = Dedupe("dedupe", key="k", ttl=60, time="event", max_skew=3600)
    await stage.open(context(letters))
    values = [{"k": 1}, {"k": 2}, {"k": 1}]
    source = riprap.SourceBatch("p", values, start=0, timestamps=[100, 1e12, 110])
    out: list[riprap.Batch] = []

    async def emit(batch: riprap.Batch) -> None:
        out.append(batch)

    ack = riprap.lowlevel.Ack(lambda: None)
    await stage.process(riprap.Batch(list(values), ack, SourceOrigin(source)), emit)
    assert [(1, "timestamp_out_of_range")] == letters
    assert [[{"k": 1}]] == [batch.items for batch in out]
    assert 1 == stage.statistics().duplicates


async def test_long_keys_are_kept_as_digests_so_max_keys_bounds_bytes(tmp_path: Path) -> None:
    """Keys of 64 KiB: each repeat is dropped, keys equal but for their end are not, and
    the checkpoint stays small."""
    long_tail = "x" * 65_536
    keys = [f"{i:03d}{long_tail}" for i in range(100)] + [f"{long_tail}{i:03d}" for i in range(100)]
    values = [{"id": key} for key in keys * 2]
    sink = CountingSink()
    store = tmp_path / "checkpoints.db"
    stage = Dedupe("dedupe", key="id", max_keys=1_000)
    pipeline = (
        riprap.Pipeline("long-keys", checkpoint=riprap.checkpoints.SqliteCheckpoints(store))
        .source(IterableSource("feed", values))
        .stage(stage)
        .sink(sink)
    )
    await pipeline.run()
    assert dict.fromkeys(keys, 1) == dict(sink.counts)
    state = stage.snapshot().materialize()
    assert (200, {65}) == (len(state["keys"]), {len(key) for key in state["keys"]})
    assert store.stat().st_size < 256 * 1024  # the keys whole would take 13 MiB


async def test_a_saved_state_with_a_long_key_whole_still_drops_its_repeat() -> None:
    """A version 2 state kept long keys whole: restored, they match the digests."""
    long_key = "k" * 100
    stage = Dedupe("dedupe", key="id", max_keys=10)
    stage.restore({"version": 2, "keys": [long_key, "short"], "times": [0.0, 0.0]})
    await stage.open(context([]))
    out: list[riprap.Batch] = []

    async def emit(batch: riprap.Batch) -> None:
        out.append(batch)

    values = [{"id": long_key}, {"id": "short"}, {"id": "new"}]
    await stage.process(riprap.Batch(values, riprap.lowlevel.Ack(lambda: None), None), emit)
    assert [[{"id": "new"}]] == [batch.items for batch in out]
    out[0].ack.release()
    state = stage.snapshot().materialize()
    assert (3, [65, 5, 3]) == (state["version"], [len(key) for key in state["keys"]])
