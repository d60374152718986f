"""Dedupe on keyed state (``store=``): repeats dropped per partition, cut with the positions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
from riprap.checkpoints import MemoryCheckpoints, SqliteCheckpoints
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.connectors.sqlite import read_table
from riprap.stages.dedupe import Dedupe
from riprap.state import MemoryStore, SqliteStore, StateStore
from riprap.testing import VirtualClock

from ._dedupe_workers import FILES, LINES, PIPELINE
from .test_dedupe import CountingSink, delivery

if TYPE_CHECKING:
    from pathlib import Path

RECORDS = 20_000


def store_of(kind: str, tmp_path: Path) -> StateStore:
    return MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "state")


def deliveries(
    backend: riprap.checkpoints.CheckpointBackend,
    source: riprap.Source,
    sink: riprap.Sink,
    dedupe: Dedupe,
    *,
    fail_at: int | None = None,
) -> riprap.Pipeline:
    """What a process builds on each start: a fresh Dedupe on the store, positions restored."""

    def after(value: dict[str, Any]) -> dict[str, Any]:
        if value["id"] == fail_at:
            raise RuntimeError("bug in a step after dedupe")
        return value

    return (
        riprap.Pipeline("deliveries", checkpoint=backend, batch_size=250)
        .source(source)
        .stage(dedupe)
        .map("after", after)
        .sink(sink)
    )


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_crash_and_its_restart_write_each_key_once(tmp_path: Path, kind: str) -> None:
    """A run stopped by a failing step after the dedupe, then restarted: each id once, the
    repeats counted as duplicates."""
    values = [delivery(n) for n in range(RECORDS)]
    unique = len({value["id"] for value in values})
    backend = SqliteCheckpoints(tmp_path / "checkpoints.db")
    sink = CountingSink()
    crashing = deliveries(
        backend,
        IterableSource("feed", values, partition="a"),
        sink,
        Dedupe("dedupe", key="id", ttl=3600, store=store_of(kind, tmp_path)),
        fail_at=9_000,
    )
    with pytest.raises(riprap.PipelineError, match="bug in a step after dedupe"):
        await crashing.run()
    assert 0 < sum(sink.counts.values()) < unique
    stage = Dedupe("dedupe", key="id", ttl=3600, store=store_of(kind, tmp_path))
    again = deliveries(backend, IterableSource("feed", values, partition="a"), sink, stage)
    report = await again.run()
    assert "completed" == report.outcome
    assert (unique, {1}) == (len(sink.counts), set(sink.counts.values()))
    statistics = stage.statistics()
    assert (statistics.records_in - statistics.passed, None) == (
        statistics.duplicates,
        statistics.keys,
    )
    assert 0 < statistics.duplicates


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_key_is_dropped_until_its_ttl_has_passed_across_runs(
    tmp_path: Path, kind: str
) -> None:
    """On the pipeline clock: a key let through by one run is dropped by the next within the
    ttl and goes through again after it."""
    clock = VirtualClock()
    backend = SqliteCheckpoints(tmp_path / "checkpoints.db")
    written: list[list[Any]] = []
    for run, step in enumerate((0.0, 30.0, 31.0)):
        clock.advance(step)
        sink = MemorySink()
        values = ["a", "b"] * (run + 1)  # each run reads the two records after the last
        pipeline = (
            riprap.Pipeline("clock", checkpoint=backend, clock=clock)
            .source(IterableSource("feed", values, partition="p"))
            .stage(Dedupe("dedupe", key=lambda v: v, ttl=60, store=store_of(kind, tmp_path)))
            .sink(sink)
        )
        await pipeline.run()
        written.append(sink.values)
    assert [["a", "b"], [], ["a", "b"]] == written


@pytest.mark.anyio
async def test_each_partition_keeps_its_own_keys(tmp_path: Path) -> None:
    """State is partitioned like the input: a key repeated in another file goes through."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_bytes(b'"x"\n"y"\n"x"\n')
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("partitions", checkpoint=MemoryCheckpoints())
        .source(JsonLinesSource(str(tmp_path / "*.jsonl"), decode=True))
        .stage(Dedupe("dedupe", key=lambda v: v, ttl=60, store=MemoryStore()))
        .sink(sink)
    )
    await pipeline.run()
    assert ["x", "x", "y", "y"] == sorted(sink.values)


@pytest.mark.anyio
async def test_a_record_without_its_key_is_dead_lettered(tmp_path: Path) -> None:
    """A missing key field is a data error: the record is dead-lettered, the others go on."""
    sink = MemorySink()
    letters = tmp_path / "dlq.jsonl"
    pipeline = (
        riprap.Pipeline(
            "missing",
            checkpoint=MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(letters),
        )
        .source(IterableSource("feed", [{"id": 1}, {"other": 2}, {"id": 1}]))
        .stage(Dedupe("dedupe", key="id", ttl=60, store=MemoryStore()))
        .sink(sink)
    )
    report = await pipeline.run()
    assert ([{"id": 1}], {"missing_key": 1}) == (sink.values, report.dead_lettered)


def test_options_a_store_cannot_keep_are_refused(tmp_path: Path) -> None:
    """max_keys, no ttl, event time or something that is no store: a ConfigError naming it."""
    store = MemoryStore()
    bad: list[dict[str, Any]] = [
        {"ttl": 1, "max_keys": 10, "store": store},
        {"max_keys": 10, "store": store, "ttl": None},
        {"ttl": 1, "time": "event", "store": store},
        {"ttl": 1, "store": tmp_path},
    ]
    options = []
    for kwargs in bad:
        with pytest.raises(riprap.ConfigError) as caught:
            Dedupe("dedupe", key="id", **kwargs)
        options.append(caught.value.option)
    assert ["Dedupe.max_keys", "Dedupe.max_keys", "Dedupe.time", "Dedupe.store"] == options


@pytest.mark.slow
@pytest.mark.anyio
async def test_two_workers_over_files_keep_the_first_of_each_key_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Dedupe on a store is keyed state: two workers, each reading whole files, keep exactly
    what one would."""
    monkeypatch.chdir(tmp_path)
    for f in range(FILES):
        lines = (orjson.dumps({"id": f"{f}-{n}", "n": n}) + b"\n" for n in range(LINES))
        (tmp_path / f"in-{f}.jsonl").write_bytes(b"".join(lines))
    report = riprap.run_workers(f"{PIPELINE}:first_per_file", workers=2)
    assert ("completed", 2) == (report.report.outcome, len(report.workers))
    rows = await read_table(tmp_path / "out.db", "firsts")
    assert sorted(f"{f}-{n}" for f in range(FILES) for n in range(0, LINES, 3)) == sorted(rows)
