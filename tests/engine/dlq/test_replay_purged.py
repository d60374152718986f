"""A replay resumed after letters were purged from its store skips none of those stored since."""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Literal

import pytest

import riprap
from riprap.checkpoints import SqliteCheckpoints, decode
from riprap.connectors.memory import MemorySink
from riprap.deadletters import (
    DeadLetterFilter,
    DeadLetterSource,
    JsonLinesDeadLetters,
    SqliteDeadLetters,
    purge_dead_letters,
    read_dead_letters,
)

from ._letters import T0, make_letter

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

Kind = Literal["jsonl", "sqlite"]


async def store(path: Path, kind: Kind, values: range, at: float, stage: str = "parse") -> None:
    """Dead-letter the records ``values`` (offsets and values alike), failed at ``at``."""
    letters = [make_letter(i, value=i, at=at, stage=stage) for i in values]
    sink = JsonLinesDeadLetters(path) if kind == "jsonl" else SqliteDeadLetters(path)
    await sink.open()
    await sink.write(letters)
    await sink.aclose()


async def replay(
    path: Path, checkpoints: Path, letters: DeadLetterFilter | None = None
) -> list[object]:
    """One replay run under 'orders.replay' with SQLite checkpoints: the values it sent."""
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("orders.replay", checkpoint=SqliteCheckpoints(checkpoints))
        .source(DeadLetterSource(path, filter=letters))
        .sink(sink)
    )
    await pipeline.run()
    return list(sink.values)


def stored_position(checkpoints: Path, partition: str) -> int:
    """The replay's position in its latest checkpoint, read from the store's file."""
    with sqlite3.connect(checkpoints) as db:
        query = "SELECT snapshot FROM riprap_checkpoints WHERE pipeline = 'orders.replay'"
        (data,) = db.execute(query).fetchone()
    return decode(data, where=str(checkpoints), pipeline="orders.replay").positions[partition]


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_replay_after_a_purge_resumes_after_the_letter_it_sent_last(
    tmp_path: Path, kind: Kind, caplog: pytest.LogCaptureFixture
) -> None:
    """Replay all fifteen, purge the older ten, three new: exactly the three are sent."""
    path, checkpoints = tmp_path / f"dlq.{kind}", tmp_path / "checkpoints.db"
    await store(path, kind, range(10), T0)
    await store(path, kind, range(10, 15), T0 + 100)
    assert list(range(15)) == await replay(path, checkpoints)
    assert 10 == purge_dead_letters(path, before=T0 + 50)
    await store(path, kind, range(100, 103), T0 + 200)
    with caplog.at_level(logging.WARNING, logger="riprap.dlq"):
        assert [100, 101, 102] == await replay(path, checkpoints)
    assert "resumes after the letter it sent last, now at 5" in caplog.text
    await store(path, kind, range(103, 105), T0 + 300)
    assert [103, 104] == await replay(path, checkpoints)
    assert [] == await replay(path, checkpoints)
    assert 15 + 5 == stored_position(checkpoints, f"dlq:{path}")  # positions only grow


async def test_every_letter_sent_purged_means_from_the_first_letter_stored(
    tmp_path: Path,
) -> None:
    """Replay all, purge all, new letters: the letter sent last is gone, so every one now."""
    path, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    await store(path, "jsonl", range(8), T0)
    assert list(range(8)) == await replay(path, checkpoints)
    assert 8 == purge_dead_letters(path, before=T0 + 50)
    await store(path, "jsonl", range(100, 104), T0 + 200)
    assert [100, 101, 102, 103] == await replay(path, checkpoints)
    assert [] == await replay(path, checkpoints)


async def test_letters_appended_since_are_replayed_without_a_word(tmp_path: Path) -> None:
    """A store that only grew resumes where the replay stopped, as before."""
    path, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    await store(path, "jsonl", range(6), T0)
    assert list(range(6)) == await replay(path, checkpoints)
    await store(path, "jsonl", range(6, 9), T0 + 10)
    assert [6, 7, 8] == await replay(path, checkpoints)


async def test_a_filtered_replays_position_follows_its_letter_too(tmp_path: Path) -> None:
    """Another filter's position says what was sent: after a purge it still does."""
    path, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    await store(path, "jsonl", range(4), T0, stage="enrich")
    await store(path, "jsonl", range(4, 8), T0 + 100, stage="parse")
    assert [4, 5, 6, 7] == await replay(path, checkpoints, DeadLetterFilter(stage="parse"))
    assert 4 == purge_dead_letters(path, before=T0 + 50)
    await store(path, "jsonl", range(100, 102), T0 + 200, stage="parse")
    assert [100, 101] == await replay(path, checkpoints)


async def test_a_position_inside_a_batch_has_the_letter_before_it(tmp_path: Path) -> None:
    """A checkpoint may stop at any letter of a batch (a split batch): each has its letter."""
    path = tmp_path / "dlq.jsonl"
    await store(path, "jsonl", range(5), T0)
    source = DeadLetterSource(path)
    await source.open(riprap.SourceContext(pipeline="orders.replay", positions={}))
    batch = await source.read(10)
    await source.aclose()
    assert batch is not None
    ids = [make_letter(i, value=i, at=T0).id for i in range(5)]
    partition = source.partition
    at = {p: source.identities({partition: p}).get(partition) for p in (1, 3, 5)}
    assert {1: ids[0], 3: ids[2], 5: ids[4]} == at


async def test_a_rotation_that_deleted_the_oldest_file_skips_no_letter(tmp_path: Path) -> None:
    """With retention="delete_oldest", rotating past the backups drops letters the replay
    counted: the next replay still sends every letter stored after the ones it sent."""
    path, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    letters = JsonLinesDeadLetters(path, max_bytes=8_192, backups=1, retention="delete_oldest")
    await letters.open()
    for first in range(0, 40, 4):  # a write of four letters at a time: each file holds a few
        await letters.write([make_letter(i, value=i, at=T0) for i in range(first, first + 4)])
        if first == 8:
            sent = await replay(path, checkpoints)
    await letters.aclose()
    stored = [letter.original_value() for letter in read_dead_letters(path)]
    assert (list(range(12)), True) == (sent, stored[0] > 12)  # the letters sent are gone
    assert [value for value in stored if value >= 12] == await replay(path, checkpoints)


async def test_after_a_purge_offsets_go_on_from_where_the_replay_stopped(tmp_path: Path) -> None:
    """Six letters purged before position 10: the new letters come at 10, 11... and each
    position inside the batch still has the letter before it."""
    path = tmp_path / "dlq.jsonl"
    await store(path, "jsonl", range(6), T0)
    await store(path, "jsonl", range(6, 10), T0 + 100)
    assert 6 == purge_dead_letters(path, before=T0 + 50)
    await store(path, "jsonl", range(100, 103), T0 + 200)
    source = DeadLetterSource(path)
    ids = {i: make_letter(i, value=i, at=T0).id for i in [9, 100, 101, 102]}
    context = riprap.SourceContext(
        pipeline="orders.replay",
        positions={source.partition: 10},
        identities={source.partition: ids[9]},
    )
    await source.open(context)
    batch = await source.read(10)
    await source.aclose()
    assert batch is not None
    assert ([100, 101, 102], [10, 11, 12], 13) == (batch.values, batch.offsets, batch.end)
    at = {p: source.identities({source.partition: p}).get(source.partition) for p in (11, 12, 13)}
    assert {11: ids[100], 12: ids[101], 13: ids[102]} == at
