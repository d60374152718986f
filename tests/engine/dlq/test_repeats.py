"""Repeated letters (one ``id`` stored twice) in file stores: stored once or shown once.

A repeat is what a crash leaves: the failing run dead-lettered a record, died
before its checkpoint, and dead-lettered the record again when restarted. The
JSON Lines store appends it again; SQLite keeps one row. Every reader (read,
inspect, purge, replay) folds repeats into the first copy and says how many.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from riprap import Pipeline, SourceContext
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.memory import MemorySink
from riprap.deadletters import (
    DeadLetterSource,
    JsonLinesDeadLetters,
    LetterIds,
    SqliteDeadLetters,
    read_dead_letters,
)
from tests._sources import read_batches

from ._letters import T0, make_letter
from ._replay import run_dlq

if TYPE_CHECKING:
    from pathlib import Path

    from riprap.deadletters import DeadLetter

pytestmark = pytest.mark.anyio

DAY = 86_400.0


async def store(path: Path, *writes: list[DeadLetter]) -> None:
    """Write each list of letters to the store at ``path`` (SQLite for ``.db``) in one write."""
    sink = SqliteDeadLetters(path) if path.suffix == ".db" else JsonLinesDeadLetters(path)
    await sink.open()
    try:
        for letters in writes:
            await sink.write(letters)
    finally:
        await sink.aclose()


def crashed(count: int, repeated: int, *, at: float = T0) -> list[list[DeadLetter]]:
    """The writes of a run killed after ``repeated`` letters and rerun: ``count`` letters."""
    first = [make_letter(i, value=i, at=at) for i in range(repeated)]
    rerun = [make_letter(i, value=i, at=at + 60) for i in range(count)]
    return [first, rerun]


def copies(path: Path) -> int:
    """The letters physically stored at ``path``: rows or lines."""
    if path.suffix == ".db":
        with sqlite3.connect(path) as db:
            (rows,) = db.execute("SELECT count(*) FROM riprap_dead_letters").fetchone()
        db.close()
        assert isinstance(rows, int)
        return rows
    return path.read_bytes().count(b"\n")


@pytest.mark.parametrize(("name", "stored"), [("dlq.jsonl", 8), ("dlq.db", 5)])
async def test_a_letter_written_twice_is_read_once(tmp_path: Path, name: str, stored: int) -> None:
    """JSON Lines stores both copies, SQLite one; both read back the first copy of each id."""
    path = tmp_path / name
    writes = crashed(5, 3)
    await store(path, *writes)
    with LetterIds() as seen:
        read = list(read_dead_letters(path, seen=seen))
        repeats = seen.repeats
    first = [*writes[0], *writes[1][3:]]
    assert (stored, first, stored - 5) == (copies(path), read, repeats)


def test_inspect_reports_the_repeats_it_folded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``inspect`` counts each letter once and says how many repeats it folded."""
    path = tmp_path / "dlq.jsonl"
    anyio.run(store, path, *crashed(5, 3))
    assert 0 == run_dlq("inspect", str(path))
    text = capsys.readouterr().out.splitlines()
    assert 0 == run_dlq("inspect", str(path), "--json")
    report = orjson.loads(capsys.readouterr().out)
    assert (f"{path}: 5 dead letters (3 repeats folded)", ["by stage:", "  parse  5"]) == (
        text[0],
        text[1:3],
    )
    assert (5, 3) == (report["total"], report["repeats_folded"])


def test_purge_judges_a_letter_by_its_first_copy_and_folds_repeats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An old letter goes with its newer repeat; a kept letter loses its repeat, keeps its first."""
    path = tmp_path / "dlq.jsonl"
    now = time.time()
    old = make_letter(1, value=1, at=now - 10 * DAY)
    new = make_letter(2, value=2, at=now - DAY)
    anyio.run(store, path, [old, new], [replace(old, last_failure_at=now), new])
    assert 0 == run_dlq("purge", str(path), "--older-than", "7d")
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: removed 1 dead letter (2 repeats folded) last failed before ")
    assert ([new], 1) == (list(read_dead_letters(path)), copies(path))


def test_sqlite_purge_counts_letters_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A purge of an SQLite store removes each old letter once: the store never held repeats."""
    path = tmp_path / "dlq.db"
    now = time.time()
    anyio.run(store, path, *crashed(4, 2, at=now - 10 * DAY))
    assert 0 == run_dlq("purge", str(path), "--older-than", "7d")
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: removed 4 dead letters (0 repeats folded) last failed before")
    assert 0 == copies(path)


def old_table(path: Path, letters: list[DeadLetter]) -> None:
    """An SQLite dead-letter table made without a unique ``id`` (an older riprap's), filled."""
    names = [f.name for f in fields(letters[0])]
    columns = ", ".join(f'"{name}"' for name in names)
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE riprap_dead_letters ({columns})")
        db.executemany(
            f"INSERT INTO riprap_dead_letters VALUES ({', '.join('?' for _ in names)})",
            [
                tuple(
                    orjson.dumps([list(h) for h in letter.headers]).decode()
                    if name == "headers"
                    else getattr(letter, name)
                    for name in names
                )
                for letter in letters
            ],
        )
    db.close()


async def test_an_older_table_gets_its_unique_id_and_keeps_first_rows(tmp_path: Path) -> None:
    """A table without the constraint is read folded, then migrated when a sink opens it."""
    path = tmp_path / "dlq.db"
    first, rerun = crashed(3, 2)
    old_table(path, [*first, *rerun])
    assert ([*first, rerun[2]], 5) == (list(read_dead_letters(path)), copies(path))
    await store(path, [rerun[0], make_letter(7, value=7)])
    assert ([*first, rerun[2], make_letter(7, value=7)], 4) == (
        list(read_dead_letters(path)),
        copies(path),
    )


class Outcomes:
    """A source context's ``count``: what the source reported, by outcome."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, outcome: str, count: int) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + count


@pytest.mark.parametrize("name", ["dlq.jsonl", "dlq.db"])
async def test_replay_source_skips_repeats_and_counts_them(tmp_path: Path, name: str) -> None:
    """Each letter is replayed once; repeats pass their positions and count as folded."""
    path = tmp_path / name
    await store(path, *crashed(5, 3))
    source = DeadLetterSource(path)
    outcomes = Outcomes()
    await source.open(SourceContext(pipeline="r", positions={}, count=outcomes))
    batches = await read_batches(source, max_records=2)
    await source.aclose()
    folded = {"repeats_folded": 3} if name == "dlq.jsonl" else {}
    assert ([0, 1, 2, 3, 4], folded) == ([v for b in batches for v in b.values], outcomes.counts)
    assert copies(path) == batches[-1].end


async def test_resumed_replay_skips_a_repeat_after_its_position(tmp_path: Path) -> None:
    """Resumed past the first copies, the replay does not send their later repeats again."""
    path = tmp_path / "dlq.jsonl"
    await store(path, *crashed(5, 3))  # stored: 0 1 2 | 0 1 2 3 4
    source = DeadLetterSource(path)
    outcomes = Outcomes()
    position = {source.partition: 2}  # 0 and 1 were replayed, then the replay was killed
    await source.open(SourceContext(pipeline="r", positions=position, count=outcomes))
    batches = await read_batches(source)
    await source.aclose()
    assert ([2, 3, 4], {"repeats_folded": 3, "already_replayed": 2}) == (
        [v for b in batches for v in b.values],
        outcomes.counts,
    )


async def test_a_pipeline_replay_processes_each_letter_once(tmp_path: Path) -> None:
    """A whole replay run writes each letter's record once and reports the repeats folded."""
    path = tmp_path / "dlq.jsonl"
    await store(path, *crashed(6, 4))
    sink = MemorySink()
    report = await (
        Pipeline("orders.replay", checkpoint=MemoryCheckpoints())
        .source(DeadLetterSource(path))
        .sink(sink)
        .run()
    )
    values: list[Any] = sink.values
    assert ([0, 1, 2, 3, 4, 5], 6, {"repeats_folded": 4}) == (
        values,
        report.records_in,
        dict(report.source_outcomes),
    )
    assert "repeats_folded" in report.format()
