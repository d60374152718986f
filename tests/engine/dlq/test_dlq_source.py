"""``DeadLetterSource``: replaying original records, resuming, filtering, rate limiting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import pytest

from riprap import ConfigError, Pipeline, Source, SourceContext
from riprap.checkpoints import MemoryCheckpoints
from riprap.deadletters import (
    DeadLetterFilter,
    DeadLetterSource,
    JsonLinesDeadLetters,
    SqliteDeadLetters,
)
from tests._sources import read_batches, read_to_end, stalled_at_the_bound

from ._letters import make_letter

if TYPE_CHECKING:
    from pathlib import Path

    from riprap import Batch
    from riprap.deadletters import DeadLetter

pytestmark = pytest.mark.anyio


class FakeClock:
    """A clock whose time moves only when someone sleeps; it records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class ListSink:
    """Collects the values written to it; durable for the life of the test."""

    name = "collect"
    idempotent = False

    def __init__(self) -> None:
        self.values: list[Any] = []

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def write(self, batch: Batch) -> None:
        await anyio.lowlevel.checkpoint()
        self.values.extend(batch.items)

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


async def store(path: Path, letters: list[DeadLetter]) -> None:
    """Write ``letters`` to a store at ``path`` (SQLite for ``.db``, else JSON Lines)."""
    sink = SqliteDeadLetters(path) if path.suffix == ".db" else JsonLinesDeadLetters(path)
    await sink.open()
    await sink.write(letters)
    await sink.aclose()


def context(source: DeadLetterSource, position: int | None = None) -> SourceContext:
    """A source context, resuming the source's partition at ``position`` if given."""
    positions = {} if position is None else {source.partition: position}
    return SourceContext(pipeline="orders.replay", positions=positions)


@pytest.mark.parametrize("name", ["dlq.jsonl", "dlq.db"])
async def test_yields_original_records(tmp_path: Path, name: str) -> None:
    """Values, keys, headers and event times are the originals, offsets are read indexes."""
    path = tmp_path / name
    await store(
        path,
        [
            make_letter(10, value=b"\xff\x00", key=None, headers=()),
            make_letter(11, value={"order": 2}, key="k2", headers=(("h", b"v"),)),
        ],
    )
    source = DeadLetterSource(path)
    assert isinstance(source, Source)
    await source.open(context(source))
    (batch,) = await read_batches(source)
    await source.aclose()
    assert f"dlq:{path}" == batch.partition  # tmp_path is absolute already
    assert [b"\xff\x00", {"order": 2}] == batch.values
    assert ([None, "k2"], [[], [("h", b"v")]]) == (batch.keys, batch.headers)
    assert [make_letter(10).timestamp] * 2 == batch.timestamps
    assert ([0, 1], 0, 2) == (batch.offsets, batch.start, batch.end)


async def test_resumes_after_the_checkpointed_position(tmp_path: Path) -> None:
    """Opening at position 3 skips the first three letters."""
    path = tmp_path / "dlq.jsonl"
    await store(path, [make_letter(10 + i, value=i) for i in range(5)])
    source = DeadLetterSource(path)
    await source.open(context(source, 3))
    batches = await read_batches(source, max_records=1)
    await source.aclose()
    assert [([3], 3, 4), ([4], 4, 5)] == [(b.values, b.start, b.end) for b in batches]


async def test_filter_keeps_positions_of_every_letter(tmp_path: Path) -> None:
    """Filtered-out letters are skipped, but offsets still count them."""
    path = tmp_path / "dlq.jsonl"
    stages = ["parse", "enrich", "parse", "enrich", "enrich"]
    await store(path, [make_letter(10 + i, value=i, stage=s) for i, s in enumerate(stages)])
    source = DeadLetterSource(path, filter=DeadLetterFilter(stage="enrich"))
    await source.open(context(source))
    batches = await read_batches(source, max_records=2)
    await source.aclose()
    assert [([1, 3], [1, 3], 4), ([4], [4], 5)] == [(b.values, b.offsets, b.end) for b in batches]


async def test_rate_limit_in_virtual_time(tmp_path: Path) -> None:
    """At 10 records per second, 30 records take 2 s of sleep after a 1 s burst."""
    path = tmp_path / "dlq.jsonl"
    await store(path, [make_letter(100 + i, value=i) for i in range(30)])
    clock = FakeClock()
    source = DeadLetterSource(path, rate_limit=10, clock=clock)
    await source.open(context(source))
    batches = await read_batches(source, max_records=1000)
    await source.aclose()
    assert [10, 10, 10] == [len(b) for b in batches]
    assert [1.0, 1.0] == clock.sleeps
    assert list(range(30)) == [v for b in batches for v in b.values]


async def test_slow_rate_limit_spaces_records(tmp_path: Path) -> None:
    """Below one record per second, records go one at a time, ``1 / rate`` apart."""
    path = tmp_path / "dlq.jsonl"
    await store(path, [make_letter(10 + i) for i in range(3)])
    clock = FakeClock()
    source = DeadLetterSource(path, rate_limit=0.5, clock=clock)
    await source.open(context(source))
    batches = await read_batches(source)
    await source.aclose()
    assert ([1, 1, 1], [2.0, 2.0]) == ([len(b) for b in batches], clock.sleeps)


@pytest.mark.parametrize("rate", [0, -1.0, float("inf"), float("nan")])
def test_impossible_rate_limit_is_a_config_error(tmp_path: Path, rate: float) -> None:
    """A rate limit must be a positive finite number."""
    with pytest.raises(ConfigError, match="rate_limit"):
        DeadLetterSource(tmp_path / "dlq.jsonl", rate_limit=rate)


async def test_replaying_twice_under_one_name_does_not_duplicate(tmp_path: Path) -> None:
    """The checkpointed position makes a second replay send only letters added since."""
    path = tmp_path / "dlq.jsonl"
    await store(path, [make_letter(10, value="a"), make_letter(11, value="b")])
    checkpoints = MemoryCheckpoints()

    async def replay() -> list[Any]:
        sink = ListSink()
        pipeline = Pipeline("orders.replay", checkpoint=checkpoints)
        await pipeline.source(DeadLetterSource(path)).sink(sink).run()
        return sink.values

    assert ["a", "b"] == await replay()
    assert [] == await replay()
    await store(path, [make_letter(12, value="c")])
    assert ["c"] == await replay()


KIB = 1024


def big_letters(count: int) -> tuple[list[DeadLetter], list[str]]:
    """``count`` letters whose values are texts of 100 KiB, numbered; and those values."""
    values = [f"{i:06d}" + "." * (100 * KIB - 6) for i in range(count)]
    return [make_letter(i, value=v) for i, v in enumerate(values)], values


@pytest.mark.parametrize("name", ["dlq.jsonl", "dlq.db"])
async def test_a_replay_ends_its_batches_at_the_byte_limit(tmp_path: Path, name: str) -> None:
    """Twelve letters of 100 KiB, batches of at most 100 records and 250,000 bytes: batches of
    three (the third reaches the limit), each weighing its stored values; every letter once."""
    letters, values = big_letters(12)
    await store(tmp_path / name, letters)
    batches = await read_to_end(DeadLetterSource(tmp_path / name), 100, max_batch_bytes=250_000)
    assert values == [v for b in batches for v in b.values]
    assert [3, 3, 3, 3] == [len(b) for b in batches]
    for batch in batches:
        assert len(batch) * 100 * KIB < batch.nbytes < len(batch) * (100 * KIB + 64)


async def test_a_replay_reads_no_more_letters_than_its_bytes_in_flight(tmp_path: Path) -> None:
    """40 letters of 100 KiB replayed behind a stalled sink, ``max_in_flight_bytes`` 1 MiB:
    reading stops with the batch that reaches 1 MiB (before, letters counted by records only);
    once the sink moves every letter arrives once, in order."""
    letters, values = big_letters(40)
    await store(tmp_path / "dlq.jsonl", letters)
    replay = DeadLetterSource(tmp_path / "dlq.jsonl")
    assert values == await stalled_at_the_bound("dlq-bytes", replay, 40)
