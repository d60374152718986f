"""DeltaSink on a local table: app transactions, replays, schema evolution, other writers."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import anyio
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import riprap
from riprap import ConfigError, DataError, Sink, SinkContext, SystemClock
from riprap.connectors.lake import DeltaSink
from riprap.connectors.memory import IterableSource
from riprap.deadletters import SqliteDeadLetters, read_dead_letters
from riprap.lowlevel import Ack, DropsOrigin

from ._helpers import batch_of

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from riprap import Batch

pytestmark = pytest.mark.anyio


def bound(sink: DeltaSink, pipeline: str = "p") -> DeltaSink:
    """``sink`` bound as a pipeline named ``pipeline`` would bind it."""
    sink.bind(SinkContext(pipeline=pipeline, clock=SystemClock()))
    return sink


async def write_all(sink: DeltaSink, *batches: Batch) -> None:
    """Open the sink, write the batches, flush and close."""
    await sink.open()
    try:
        for batch in batches:
            await sink.write(batch)
        await sink.flush()
    finally:
        await sink.aclose()


def numbered(first: int, last: int) -> list[dict[str, Any]]:
    """Records ``{"n": i}`` for ``i`` from ``first`` to ``last`` inclusive."""
    return [{"n": i} for i in range(first, last + 1)]


def table_rows(path: Path) -> list[dict[str, Any]]:
    """The table's rows, sorted by ``n``."""
    rows: list[dict[str, Any]] = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda row: row["n"])


async def test_is_a_sink(tmp_path: Path) -> None:
    """DeltaSink satisfies the Sink protocol and declares itself idempotent."""
    sink = DeltaSink(tmp_path, new_columns="refuse")
    assert (True, True) == (isinstance(sink, Sink), sink.idempotent)


async def test_each_commit_names_the_positions_it_covers(tmp_path: Path) -> None:
    """Every write is a version whose app transaction is the partition's next position."""
    sink = bound(DeltaSink(tmp_path, new_columns="refuse"))
    await write_all(sink, batch_of(numbered(0, 2)), batch_of(numbered(3, 4), start=3))
    table = DeltaTable(str(tmp_path))
    assert (1, 5) == (table.version(), table.transaction_version("riprap/p/delta/in"))
    assert numbered(0, 4) == table_rows(tmp_path)
    assert {"riprap.pipeline": "p", "riprap.sink": "delta"}.items() <= table.history(1)[0].items()


async def test_replay_skips_what_the_table_holds(tmp_path: Path) -> None:
    """A run that replays committed records (killed before its checkpoint) skips them."""
    await write_all(bound(DeltaSink(tmp_path, new_columns="refuse")), batch_of(numbered(0, 9)))
    sink = bound(DeltaSink(tmp_path, new_columns="refuse"))
    await write_all(sink, batch_of(numbered(0, 6)), batch_of(numbered(7, 14), start=7))
    assert numbered(0, 14) == table_rows(tmp_path)
    assert (10, 1) == (sink.statistics().records_skipped, sink.statistics().commits)


async def test_pipelines_and_sinks_have_their_own_transactions(tmp_path: Path) -> None:
    """Another pipeline's commits of the same positions are not skipped: they are its own."""
    await write_all(bound(DeltaSink(tmp_path, new_columns="refuse"), "a"), batch_of(numbered(0, 1)))
    await write_all(bound(DeltaSink(tmp_path, new_columns="refuse"), "b"), batch_of(numbered(0, 1)))
    assert [0, 0, 1, 1] == [row["n"] for row in table_rows(tmp_path)]


async def test_records_wait_for_their_commit(tmp_path: Path) -> None:
    """With ``max_rows`` the batch's ack stays retained until the commit that holds it."""
    done: list[bool] = []
    ack = Ack(lambda: done.append(True))
    sink = bound(DeltaSink(tmp_path, new_columns="refuse", max_rows=5))
    await sink.open()
    await sink.write(batch_of(numbered(0, 2), ack=ack))
    ack.release()  # the runtime's own reference, released when write returns
    waiting = (list(done), DeltaTable.is_deltatable(str(tmp_path)))
    await sink.write(batch_of(numbered(3, 5), start=3))
    assert ([], False) == waiting
    assert ([True], numbered(0, 5)) == (done, table_rows(tmp_path))


async def test_new_columns_are_added_when_asked(tmp_path: Path) -> None:
    """``new_columns="add"`` widens the table; older rows read the new column as null."""
    sink = bound(DeltaSink(tmp_path, new_columns="add"))
    await write_all(sink, batch_of([{"n": 0}]), batch_of([{"n": 1, "tag": "x"}], start=1))
    assert [{"n": 0, "tag": None}, {"n": 1, "tag": "x"}] == table_rows(tmp_path)


async def test_new_columns_are_refused_when_asked(tmp_path: Path) -> None:
    """``new_columns="refuse"`` makes a record with an unknown field a DataError."""
    await write_all(bound(DeltaSink(tmp_path, new_columns="refuse")), batch_of([{"n": 0}]))
    sink = bound(DeltaSink(tmp_path, new_columns="refuse"))
    await sink.open()
    with pytest.raises(DataError, match="field 'tag' is not in the schema"):
        await sink.write(batch_of([{"n": 1, "tag": "x"}], start=1))
    await sink.flush()
    assert [{"n": 0}] == table_rows(tmp_path)


async def test_the_tables_schema_wins(tmp_path: Path) -> None:
    """An existing table's schema is used; a different declared one is refused on open."""
    await write_all(bound(DeltaSink(tmp_path, new_columns="refuse")), batch_of([{"n": 0}]))
    sink = DeltaSink(tmp_path, new_columns="refuse", schema=pa.schema([("m", pa.string())]))
    with pytest.raises(ConfigError, match="schema"):
        await sink.open()


async def test_a_second_writer_of_the_same_pipeline_is_stopped(tmp_path: Path) -> None:
    """A stale process of the same pipeline cannot commit over what another one committed."""
    stale = bound(DeltaSink(tmp_path, new_columns="refuse", max_rows=100))
    await stale.open()
    await stale.write(batch_of(numbered(0, 2)))
    await write_all(bound(DeltaSink(tmp_path, new_columns="refuse")), batch_of(numbered(0, 4)))
    with pytest.raises(RuntimeError, match="another writer of pipeline 'p'"):
        await stale.flush()
    assert numbered(0, 4) == table_rows(tmp_path)


async def test_writers_of_other_pipelines_append_concurrently(tmp_path: Path) -> None:
    """Commits of several pipelines racing on one table all land (Delta retries them)."""
    await write_all(bound(DeltaSink(tmp_path, new_columns="refuse"), "seed"), batch_of([{"n": -1}]))

    async def writer(k: int) -> None:
        sink = bound(DeltaSink(tmp_path, new_columns="refuse"), f"w{k}")
        batches = [batch_of([{"n": k * 100 + i}], start=i) for i in range(5)]
        await write_all(sink, *batches)

    async with anyio.create_task_group() as group:
        for k in range(3):
            group.start_soon(writer, k)
    expected = [-1, *(k * 100 + i for k in range(3) for i in range(5))]
    assert sorted(expected) == [row["n"] for row in table_rows(tmp_path)]


async def test_bad_records_go_to_the_dead_letter_store(tmp_path: Path) -> None:
    """In a pipeline, records that do not fit are dead-lettered and the rest committed once."""
    values: list[Any] = [{"n": 0}, {"n": "zero"}, {"n": 2}, {"n": 3, "x": 1}, {"n": 4}]
    pipeline = (
        riprap.Pipeline(
            "to-delta",
            checkpoint_path=str(tmp_path / "state.db"),
            dead_letter=SqliteDeadLetters(tmp_path / "dlq.db"),
            batch_size=5,
        )
        .source(IterableSource("numbers", values))
        .sink(DeltaSink(tmp_path / "table", new_columns="refuse", max_rows=100))
    )
    report = await pipeline.run()
    letters = list(read_dead_letters(tmp_path / "dlq.db"))
    table = DeltaTable(str(tmp_path / "table"))
    assert "completed" == report.outcome
    assert [{"n": 0}, {"n": 2}, {"n": 4}] == table_rows(tmp_path / "table")
    assert [(1, "schema"), (3, "schema")] == [(letter.offset, letter.reason) for letter in letters]
    assert 5 == table.transaction_version("riprap/to-delta/delta/memory")


async def test_a_column_delta_cannot_store_dead_letters_its_records(tmp_path: Path) -> None:
    """A new field of a type Delta has no column for is the record's error, not the run's.

    Datetimes with an offset are stored as Delta's UTC timestamps (the same
    instants); a duration has no Delta type, so its record is dead-lettered.
    """
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    at = datetime.datetime(2026, 12, 6, 10, 0, tzinfo=plus_two)
    values: list[Any] = [
        {"n": 0, "at": at},
        {"n": 1, "at": at, "took": datetime.timedelta(seconds=3)},
        {"n": 2, "at": at + datetime.timedelta(hours=1)},
    ]
    pipeline = (
        riprap.Pipeline(
            "to-delta",
            checkpoint_path=str(tmp_path / "state.db"),
            dead_letter=SqliteDeadLetters(tmp_path / "dlq.db"),
        )
        .source(IterableSource("events", values))
        .sink(DeltaSink(tmp_path / "table", new_columns="add"))
    )
    report = await pipeline.run()
    letters = list(read_dead_letters(tmp_path / "dlq.db"))
    assert "completed" == report.outcome
    assert [(1, "schema")] == [(letter.offset, letter.reason) for letter in letters]
    assert "Duration" in letters[0].message
    rows = sorted(DeltaTable(str(tmp_path / "table")).to_pyarrow_table().to_pylist(), key=str)
    assert [0, 2] == [row["n"] for row in sorted(rows, key=lambda row: row["n"])]
    assert {at, at + datetime.timedelta(hours=1)} == {row["at"] for row in rows}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("new_columns", "maybe"),
        ("max_rows", 0),
        ("max_age", 0),
        ("compression", "zip"),
        ("file_bytes", 0),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, option: str, value: Any) -> None:
    """An invalid option is a ConfigError that names it."""
    options: dict[str, Any] = {"new_columns": "refuse", option: value}
    with pytest.raises(ConfigError, match=option):
        DeltaSink(tmp_path, **options)


def located(batch: Batch) -> Batch:
    """``batch`` with an origin the sink must locate item by item (the general path)."""
    return riprap.Batch(batch.items, batch.ack, DropsOrigin(batch.origin, []))


@pytest.mark.parametrize("origin", [lambda b: b, located], ids=["straight", "located"])
async def test_straight_batches_are_committed_as_located_ones(
    tmp_path: Path, origin: Callable[[Batch], Batch]
) -> None:
    """Straight from the source or located item by item: same skips, same errors, same rows."""
    await write_all(bound(DeltaSink(tmp_path, new_columns="refuse")), batch_of(numbered(0, 3)))
    sink = bound(DeltaSink(tmp_path, new_columns="refuse"))
    await sink.open()
    with pytest.raises(DataError, match=r"the record at in@5: field 'extra'"):
        await sink.write(origin(batch_of([*numbered(2, 4), {"n": 5, "extra": 1}], start=2)))
    await sink.write(origin(batch_of(numbered(2, 6), start=2)))
    await sink.flush()
    assert numbered(0, 6) == table_rows(tmp_path)
    assert (2, 1) == (sink.statistics().records_skipped, sink.statistics().commits)
