"""Window on keyed state (``store=``): what the stage-wide window emits, per partition."""

from __future__ import annotations

import collections
import random
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
from riprap.checkpoints import MemoryCheckpoints, SqliteCheckpoints
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import JsonLinesDeadLetters, read_dead_letters
from riprap.stages.window import Aggregate, Window, WindowKind, session, sliding, tumbling
from riprap.state import MemoryStore, SqliteStore, StateStore

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

KINDS: dict[str, WindowKind] = {
    "tumbling": tumbling(10),
    "sliding": sliding(10, 5),
    "session": session(4),
}
COUNT: Aggregate[Any, int, int] = Aggregate(
    init=lambda: 0, add=lambda n, _value: n + 1, merge=lambda a, b: a + b
)


def counting(store: StateStore) -> Window:
    """Clicks per ``key`` in tumbling windows of 10 s of ``t``, kept in ``store``."""
    return Window(
        "w",
        window=tumbling(10),
        key=lambda value: value["key"],
        time=lambda value: value["t"],
        aggregate=COUNT,
        store=store,
    )


def store_of(kind: str, tmp_path: Path) -> StateStore:
    return MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "state")


def stream(seed: str, records: int = 600) -> list[dict[str, Any]]:
    """Keyed readings whose times wander back and forth; a few far behind (late)."""
    rng = random.Random(seed)
    values = []
    for i in range(records):
        t = i * 0.5 + rng.uniform(-3, 3)
        if rng.random() < 0.03:
            t -= rng.uniform(20, 40)
        values.append({"id": i, "key": f"k{rng.randrange(6)}", "t": round(t, 3)})
    return values


def window(kind: str, store: StateStore | None) -> Window:
    return Window(
        "w",
        window=KINDS[kind],
        key=lambda value: value["key"],
        time=lambda value: value["t"],
        aggregate=COUNT,
        out_of_orderness=2.0,
        allowed_lateness=3.0,
        store=store,
    )


async def emitted(
    tmp_path: Path, name: str, values: list[dict[str, Any]], stage: Window
) -> tuple[collections.Counter[bytes], set[int]]:
    """Every result the stage emitted (with repeats) and the ids it dead-lettered as late."""
    sink = MemorySink()
    letters = tmp_path / f"{name}.jsonl"
    pipeline = (
        riprap.Pipeline(
            name,
            checkpoint=MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(letters),
            batch_size=1,
            dlq_guard=None,
        )
        .source(IterableSource("feed", values))
        .stage(stage)
        .sink(sink)
    )
    report = await pipeline.run()
    assert "completed" == report.outcome
    results = collections.Counter(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in sink.values)
    late = {
        letter.offset
        for letter in read_dead_letters(letters)
        if letter.reason == "late" and letter.offset is not None
    }
    return results, late


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_on_one_partition_it_emits_what_the_stage_wide_window_emits(
    tmp_path: Path, kind: str, store: str
) -> None:
    """Record by record, with late updates, purges, late records and the end of input: the
    same results, as often, and the same late records."""
    values = stream(kind)
    expected, late = await emitted(tmp_path, "plain", values, window(kind, None))
    found, found_late = await emitted(
        tmp_path, "keyed", values, window(kind, store_of(store, tmp_path))
    )
    assert late, "the stream has late records"
    ids = {(r["key"], r["start"]) for r in map(orjson.loads, expected)}
    assert len(ids) < len(expected), "some windows are updated after they were emitted"
    assert (expected, late) == (found, found_late)


async def test_each_partition_has_its_own_watermark(tmp_path: Path) -> None:
    """A file behind another is not late: its windows close by its own time."""
    (tmp_path / "a.jsonl").write_bytes(
        b"".join(orjson.dumps({"key": "k", "t": t}) + b"\n" for t in (100, 101, 130))
    )
    (tmp_path / "b.jsonl").write_bytes(
        b"".join(orjson.dumps({"key": "k", "t": t}) + b"\n" for t in (1, 2, 30))
    )
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("files", checkpoint=MemoryCheckpoints())
        .source(JsonLinesSource(str(tmp_path / "*.jsonl"), decode=True))
        .stage(counting(MemoryStore()))
        .sink(sink)
    )
    report = await pipeline.run()
    assert {} == dict(report.dead_lettered)
    closed = sorted((v["start"], v["value"]) for v in sink.values)
    assert [(0, 2), (30, 1), (100, 2), (130, 1)] == closed


async def test_windows_go_on_across_runs_from_the_store(tmp_path: Path) -> None:
    """A window opened by one run is completed by the next, from the SQLite store."""
    checkpoints = SqliteCheckpoints(tmp_path / "checkpoints.db")
    values = [{"key": "k", "t": t} for t in (1, 2, 3, 4, 12, 13, 25)]
    outputs = []
    for stop in (3, 7):  # the first run reads three records, the second the rest
        sink = MemorySink()
        pipeline = (
            riprap.Pipeline("runs", checkpoint=checkpoints)
            .source(IterableSource("feed", values[:stop], partition="p"))
            .stage(counting(SqliteStore(tmp_path / "state")))
            .sink(sink)
        )
        await pipeline.run()
        outputs.append(sorted((v["start"], v["value"]) for v in sink.values))
    # The end of input emits the open windows (and keeps them): run two counts on.
    assert [[(0, 3)], [(0, 4), (10, 2), (20, 1)]] == outputs


def test_a_store_must_be_a_store() -> None:
    """Something else is refused, naming the option."""
    with pytest.raises(riprap.ConfigError, match=r"Window\.store"):
        Window("w", window=tumbling(1), reduce=max, store="state")  # type: ignore[arg-type]


async def test_keys_come_back_as_they_went_in_and_others_are_dead_lettered(
    tmp_path: Path,
) -> None:
    """str, int, bytes and tuple keys round-trip through the store; a key that is not JSON
    data is a data error (reason ``bad_window_key``), the other records go on."""
    keys: list[Any] = ["s", 7, b"\x00raw", ("a", 1), object()]
    values = [{"key": key, "t": t} for t in (1, 2, 15) for key in keys]
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "keys",
            checkpoint=MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            dlq_guard=None,
        )
        .source(IterableSource("feed", values))
        .stage(counting(MemoryStore()))
        .sink(sink)
    )
    report = await pipeline.run()
    assert {"bad_window_key": 3} == dict(report.dead_lettered)
    first = sorted((repr(v["key"]), v["value"]) for v in sink.values if v["start"] == 0)
    assert sorted((repr(key), 2) for key in keys[:4]) == first
