"""The SQLite dead-letter sink: idempotent on id, durable per write, private file."""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from riprap.deadletters import DeadLetterSink, SqliteDeadLetters, read_dead_letters
from riprap.deadletters._stores import is_sqlite

from ._letters import T0, make_letter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SqliteDeadLetters]:
    """An open SQLite sink under ``tmp_path``, closed after the test."""
    store = SqliteDeadLetters(tmp_path / "dlq.db")
    await store.open()
    yield store
    await store.aclose()


def rows(path: Path) -> int:
    """How many rows the dead-letter table holds."""
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM riprap_dead_letters").fetchone()
    db.close()
    assert isinstance(count, int)
    return count


async def test_sink_satisfies_the_protocol(sink: SqliteDeadLetters) -> None:
    """The SQLite store is a ``DeadLetterSink``."""
    assert isinstance(sink, DeadLetterSink)


async def test_round_trip_in_insertion_order(sink: SqliteDeadLetters) -> None:
    """Letters read back equal to what was written, oldest insert first."""
    letters = [make_letter(offset, value=v) for offset, v in ((12, b"\xff"), (10, {"a": 1}))]
    await sink.write(letters)
    await sink.write([make_letter(11)])
    assert [*letters, make_letter(11)] == list(read_dead_letters(sink.path))


async def test_same_letter_twice_keeps_one_row(sink: SqliteDeadLetters) -> None:
    """Writing a letter again, alone or in a batch, does not add a row."""
    letter = make_letter(10)
    await sink.write([letter, letter])
    await sink.write([letter])
    assert 1 == rows(sink.path)
    assert [letter] == list(read_dead_letters(sink.path))


async def test_a_second_copy_of_an_id_is_ignored(sink: SqliteDeadLetters) -> None:
    """A letter written again after a crash (same id, later details) leaves the first row as is."""
    first = make_letter(10, at=T0)
    later = replace(make_letter(10, at=T0 + 50), first_failure_at=T0 + 40, attempts=3)
    await sink.write([first])
    await sink.write([later])
    assert (1, [first]) == (rows(sink.path), list(read_dead_letters(sink.path)))


async def test_file_is_private(tmp_path: Path) -> None:
    """The database is created with mode 0600 even under umask 0."""
    path = tmp_path / "dlq.db"
    old = os.umask(0)
    try:
        store = SqliteDeadLetters(path)
        await store.open()
        await store.write([make_letter()])
        await store.aclose()
    finally:
        os.umask(old)
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)


async def test_format_is_detected(sink: SqliteDeadLetters, tmp_path: Path) -> None:
    """An SQLite store is recognised by its header, even before anything is written."""
    jsonl = tmp_path / "dlq.jsonl"
    jsonl.write_bytes(make_letter().to_json() + b"\n")
    assert (True, False) == (is_sqlite(sink.path), is_sqlite(jsonl))
    assert [] == list(read_dead_letters(sink.path))


async def test_foreign_database_is_reported(tmp_path: Path) -> None:
    """An SQLite file without the dead-letter table is named as not a dead-letter store."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(ValueError, match="not a riprap dead-letter database"):
        list(read_dead_letters(path))
