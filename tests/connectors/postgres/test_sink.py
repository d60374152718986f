"""The PostgreSQL upsert sink against a real server."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import pytest

import riprap
import riprap.checkpoints
from riprap import Batch, ConfigError, DataError, Sink, SourceBatch, TransientError
from riprap.connectors.memory import IterableSource
from riprap.connectors.postgres import PostgresSink
from riprap.deadletters import JsonLinesDeadLetters, read_dead_letters
from riprap.lowlevel import Ack, SourceOrigin

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from .conftest import PgHelper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int CHECK (qty >= 0))"


def batch_of(values: list[Any]) -> Batch:
    source = SourceBatch("in", values, start=0)
    return Batch(list(values), Ack(lambda: None), SourceOrigin(source))


@pytest.fixture
async def items(pg: PgHelper) -> AsyncIterator[PostgresSink]:
    """An open sink on a fresh ``items`` table keyed by ``id``."""
    await pg.execute(TABLE)
    sink = PostgresSink(pg.dsn, "items")
    await sink.open()
    yield sink
    await sink.aclose()


def test_protocol() -> None:
    """The sink satisfies the Sink protocol and declares itself idempotent."""
    sink = PostgresSink("postgresql://nowhere/db", "items")
    assert (True, True) == (isinstance(sink, Sink), sink.idempotent)


async def test_upserts_and_replays_are_idempotent(items: PostgresSink, pg: PgHelper) -> None:
    """Writing a batch twice, then changed values, leaves one row per key with the last value."""
    first = [{"id": i, "name": f"n{i}", "qty": i} for i in range(5)]
    await items.write(batch_of(first))
    await items.write(batch_of(first))
    await items.write(batch_of([{"id": 1, "name": "changed", "qty": 7}]))
    expected = {i: {"id": i, "name": f"n{i}", "qty": i} for i in range(5)}
    expected[1] = {"id": 1, "name": "changed", "qty": 7}
    assert expected == await pg.table("items")


async def test_last_value_per_key_in_a_batch_wins(items: PostgresSink, pg: PgHelper) -> None:
    """Repeated keys in one batch apply in order: the last one is kept."""
    values = [{"id": 1, "name": "a", "qty": 1}, {"id": 1, "name": "b", "qty": 2}]
    await items.write(batch_of(values))
    assert {1: {"id": 1, "name": "b", "qty": 2}} == await pg.table("items")


@pytest.mark.parametrize(
    ("odd", "stored"),
    [(None, None), (True, "t"), ({"not": "a column"}, '{"not":"a column"}')],
    ids=["plain", "a bool", "a mapping"],
)
async def test_a_key_written_as_int_and_as_text_is_one_row(
    items: PostgresSink, pg: PgHelper, odd: Any, stored: str | None
) -> None:
    """Keys compare as PostgreSQL text (5 and "5" are one key), whatever else the batch holds.

    A batch of plain values, and one with a value that needs the careful
    conversion (a bool, a mapping as JSON text), give the same rows.
    """
    values: list[Any] = [
        {"id": 5, "name": "int", "qty": 1},
        {"id": "5", "name": "text", "qty": 2},
        {"id": 6, "name": "six", "qty": None},
    ]
    expected: dict[int, dict[str, Any]] = {
        5: {"id": 5, "name": "text", "qty": 2},
        6: {"id": 6, "name": "six", "qty": None},
    }
    if odd is not None:
        values.append({"id": 7, "name": odd, "qty": 4})
        expected[7] = {"id": 7, "name": stored, "qty": 4}
    await items.write(batch_of(values))
    assert expected == await pg.table("items")


async def test_change_events_upsert_and_delete(pg: PgHelper) -> None:
    """In CDC mode creates and updates upsert ``after``; a delete removes ``before``'s key."""
    await pg.execute(TABLE, "INSERT INTO items VALUES (9, 'old', 1)")
    events = [
        {"op": "r", "before": None, "after": {"id": 1, "name": "a", "qty": 1}},
        {"op": "c", "before": None, "after": {"id": 2, "name": "b", "qty": 2}},
        {"op": "u", "before": None, "after": {"id": 1, "name": "a2", "qty": 3}},
        {"op": "d", "before": {"id": 2}, "after": None},
        {"op": "d", "before": {"id": 9}, "after": None},
    ]
    sink = PostgresSink(pg.dsn, "items", cdc=True)
    await sink.open()
    try:
        await sink.write(batch_of(events))
    finally:
        await sink.aclose()
    assert {1: {"id": 1, "name": "a2", "qty": 3}} == await pg.table("items")


async def test_deletes_can_be_kept(pg: PgHelper) -> None:
    """With ``delete=False`` a delete event leaves the row in place."""
    await pg.execute(TABLE, "INSERT INTO items VALUES (9, 'old', 1)")
    sink = PostgresSink(pg.dsn, "items", cdc=True, delete=False)
    await sink.open()
    try:
        await sink.write(batch_of([{"op": "d", "before": {"id": 9}, "after": None}]))
    finally:
        await sink.aclose()
    assert [9] == list(await pg.table("items"))


async def test_a_refused_row_is_a_data_error(items: PostgresSink, pg: PgHelper) -> None:
    """A constraint violation fails the batch with a DataError naming the reason; nothing lands."""
    values = [{"id": 1, "name": "ok", "qty": 1}, {"id": 2, "name": "bad", "qty": -1}]
    with pytest.raises(DataError) as caught:
        await items.write(batch_of(values))
    assert "constraint_violation" == caught.value.reason
    assert {} == await pg.table("items")


async def test_a_value_without_key_is_a_data_error(items: PostgresSink) -> None:
    """A value missing its key column is that record's DataError."""
    with pytest.raises(DataError, match="key column"):
        await items.write(batch_of([{"name": "no id"}]))


@pytest.mark.parametrize(
    ("field", "bad", "reason"),
    [
        ("qty", -1, "constraint_violation"),
        ("name", "caf\udce9", "invalid_value"),
        ("name", "nul\x00inside", "invalid_value"),
    ],
    ids=["refused-by-the-table", "lone-surrogate", "nul-in-text"],
)
async def test_only_the_bad_row_is_dead_lettered(
    pg: PgHelper, tmp_path: Path, field: str, bad: Any, reason: str
) -> None:
    """In a pipeline, a row the table refuses, or whose text no UTF-8 can hold (a lone
    surrogate, from bytes a decoder escaped) or PostgreSQL text cannot (a NUL), goes to the
    DLQ and every other row is written: none stops the run.
    """
    await pg.execute(TABLE)
    values = [{"id": i, "name": f"n{i}", "qty": i} for i in range(8)]
    values[3][field] = bad
    dlq = tmp_path / "dlq.jsonl"
    pipeline = (
        riprap.Pipeline(
            "pg-dlq",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=JsonLinesDeadLetters(dlq),
        )
        .source(IterableSource("in", values))
        .sink(PostgresSink(pg.dsn, "items"))
    )
    await pipeline.run()
    assert {0, 1, 2, 4, 5, 6, 7} == set(await pg.table("items"))
    letters = list(read_dead_letters(dlq))
    assert [(reason, 3)] == [(d.reason, d.offset) for d in letters]


async def test_missing_table_and_key_index_are_config_errors(pg: PgHelper) -> None:
    """Opening names a missing table, a missing column and a key without a unique index."""
    await pg.execute("CREATE TABLE loose (id int, name text)")
    for sink, match in [
        (PostgresSink(pg.dsn, "nothere"), "does not exist"),
        (PostgresSink(pg.dsn, "loose", columns=["nope"]), "lacks columns"),
        (PostgresSink(pg.dsn, "loose"), "no primary key or unique index"),
    ]:
        with pytest.raises(ConfigError, match=match):
            await sink.open()


def test_identifiers_are_checked() -> None:
    """Table, schema, key and column names must be plain SQL identifiers."""
    cases: list[dict[str, Any]] = [
        {"table": "a;b"},
        {"schema": "x y"},
        {"key": "1id"},
        {"columns": ['a"']},
    ]
    for kwargs in cases:
        arguments: dict[str, Any] = {"table": "items", **kwargs}
        with pytest.raises(ConfigError):
            PostgresSink("postgresql://nowhere/db", **arguments)


async def test_an_unreachable_server_is_transient() -> None:
    """No server on the port: opening fails with a TransientError that hides the DSN."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sink = PostgresSink(f"postgresql://user:s3cret@127.0.0.1:{port}/db", "items", timeout=2)
    with pytest.raises(TransientError) as caught:
        await sink.open()
    assert "s3cret" not in str(caught.value)
