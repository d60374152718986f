"""The SQLite upsert sink."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from riprap import Batch, ConfigError, DataError, Sink, SourceBatch, TransientError
from riprap.connectors.sqlite import SqliteSink, read_table, read_table_sync
from riprap.lowlevel import Ack, SourceOrigin

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


def batch_of(values: list[Any], partition: str = "in", start: int = 0) -> Batch:
    source = SourceBatch(partition, values, start=start)
    return Batch(list(values), Ack(lambda: None), SourceOrigin(source))


async def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run one query on its own connection, off the event loop."""

    def run() -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    return await anyio.to_thread.run_sync(run)


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SqliteSink]:
    """An open sink on table ``items`` keyed by ``id``, closed after the test."""
    sink = SqliteSink(tmp_path / "db.sqlite", "items")
    await sink.open()
    yield sink
    await sink.aclose()


def test_protocol(tmp_path: Path) -> None:
    """The sink satisfies the Sink protocol and declares itself idempotent."""
    sink = SqliteSink(tmp_path / "db", "t")
    expected = (True, True, "sqlite")
    assert expected == (isinstance(sink, Sink), sink.idempotent, sink.name)


@pytest.mark.anyio
async def test_upsert_writes_rows(sink: SqliteSink) -> None:
    """Each value becomes a row keyed by its id, the value stored as JSON."""
    await sink.write(batch_of([{"id": 1, "v": "a"}, {"id": "x", "v": [1, 2]}]))
    expected = {1: {"id": 1, "v": "a"}, "x": {"id": "x", "v": [1, 2]}}
    assert expected == await sink.read_all()


@pytest.mark.anyio
async def test_replay_is_idempotent(sink: SqliteSink, tmp_path: Path) -> None:
    """Writing the same batch twice leaves the same rows."""
    batch = batch_of([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
    await sink.write(batch)
    first = await query(tmp_path / "db.sqlite", "SELECT rowid, id, value FROM items")
    await sink.write(batch)
    second = await query(tmp_path / "db.sqlite", "SELECT rowid, id, value FROM items")
    assert first == second
    expected = 2
    assert expected == len(second)


@pytest.mark.anyio
async def test_later_value_wins(sink: SqliteSink) -> None:
    """A newer value for a key replaces the row, within a batch and across batches."""
    await sink.write(batch_of([{"id": 1, "v": "a"}, {"id": 1, "v": "b"}]))
    await sink.write(batch_of([{"id": 2, "v": "c"}]))
    await sink.write(batch_of([{"id": 2, "v": "d"}]))
    expected = {1: {"id": 1, "v": "b"}, 2: {"id": 2, "v": "d"}}
    assert expected == await sink.read_all()


@pytest.mark.anyio
async def test_missing_key_is_a_data_error(sink: SqliteSink) -> None:
    """A value without the key field names the table and key; nothing of the batch is written."""
    with pytest.raises(DataError) as error:
        await sink.write(batch_of([{"id": 1}, {"name": "no id"}], start=10))
    message = f"{sink.path}: table 'items': record at in@11: the value has no key field 'id'"
    assert message == str(error.value)
    expected: dict[Any, Any] = {}
    assert expected == await sink.read_all()


@pytest.mark.anyio
async def test_bad_values_are_data_errors(sink: SqliteSink) -> None:
    """A non-dict value, an unusable key or an unserialisable value is a DataError."""
    cases = [
        ([1, 2], "expected a dict with key field, got list"),
        ({"id": [1]}, "the key must be str, int, float or bytes, not list"),
        ({"id": 1, "v": object()}, "the value is not JSON-serialisable"),
    ]
    for value, message in cases:
        with pytest.raises(DataError, match=message):
            await sink.write(batch_of([value]))


@pytest.mark.anyio
async def test_key_function_and_columns(tmp_path: Path) -> None:
    """A key function fills the key column; listed fields get columns of their own."""
    path = tmp_path / "db.sqlite"
    sink = SqliteSink(path, "people", key=lambda v: v["name"].lower(), columns=["age", "tags"])
    await sink.open()
    await sink.write(batch_of([{"name": "Ann", "age": 3, "tags": ["a"]}, {"name": "Bob"}]))
    await sink.aclose()
    rows = await query(path, "SELECT key, age, tags FROM people ORDER BY key")
    expected = [("ann", 3, '["a"]'), ("bob", None, None)]
    assert expected == rows


@pytest.mark.anyio
async def test_rows_survive_reopen(tmp_path: Path) -> None:
    """Committed rows are there for a new sink and for read_table."""
    path = tmp_path / "db.sqlite"
    for value in ({"id": 1}, {"id": 2}):
        sink = SqliteSink(path, "items")
        await sink.open()
        await sink.write(batch_of([value]))
        await sink.aclose()
    expected = {1: {"id": 1}, 2: {"id": 2}}
    assert expected == await read_table(path, "items")
    assert expected == await anyio.to_thread.run_sync(read_table_sync, path, "items")


@pytest.mark.anyio
async def test_wal_mode(sink: SqliteSink, tmp_path: Path) -> None:
    """The database is switched to write-ahead logging."""
    expected = [("wal",)]
    assert expected == await query(tmp_path / "db.sqlite", "PRAGMA journal_mode")


@pytest.mark.anyio
async def test_locked_database_is_transient(tmp_path: Path) -> None:
    """A write blocked by another writer's lock is a TransientError, worth retrying."""
    path = tmp_path / "db.sqlite"
    sink = SqliteSink(path, "items", timeout=0)
    await sink.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await anyio.to_thread.run_sync(other.execute, "BEGIN IMMEDIATE")
        with pytest.raises(TransientError, match=f"^{path}: database is locked"):
            await sink.write(batch_of([{"id": 1}]))
        await anyio.to_thread.run_sync(other.execute, "ROLLBACK")
        await sink.write(batch_of([{"id": 1}]))
    finally:
        other.close()
        await sink.aclose()
    expected = {1: {"id": 1}}
    assert expected == await read_table(path, "items")


def test_identifiers_are_checked(tmp_path: Path) -> None:
    """A table or column name that is not a plain identifier is a ConfigError."""
    with pytest.raises(ConfigError, match=r"^table:"):
        SqliteSink(tmp_path / "db", 'x"; DROP TABLE y; --')
    with pytest.raises(ConfigError, match=r"^columns: column names collide"):
        SqliteSink(tmp_path / "db", "t", columns=["id"])


@pytest.mark.anyio
async def test_existing_table_without_value_column(tmp_path: Path) -> None:
    """An existing table lacking the needed columns is a ConfigError naming it."""
    path = tmp_path / "db.sqlite"
    await query(path, "CREATE TABLE items (id PRIMARY KEY)")
    with pytest.raises(ConfigError, match="table 'items' lacks \\['value'\\]"):
        await SqliteSink(path, "items").open()


@pytest.mark.anyio
async def test_read_table_of_missing_database(tmp_path: Path) -> None:
    """Reading a database that does not exist fails, naming it, and creates nothing."""
    path = tmp_path / "missing.sqlite"
    with pytest.raises(sqlite3.OperationalError, match=str(path)):
        await read_table(path, "items")
    assert not path.exists()
