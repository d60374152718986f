"""ParquetSink on a local directory: names from positions, replays, schema checks, row groups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import riprap
from riprap import ConfigError, DataError, Sink
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.lake import ParquetSink
from riprap.connectors.memory import IterableSource
from riprap.deadletters import SqliteDeadLetters, read_dead_letters
from riprap.lowlevel import Ack, DropsOrigin

from ._helpers import batch_of, files, folders, rows

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from riprap import Batch

pytestmark = pytest.mark.anyio


async def write_all(sink: ParquetSink, *batches: Batch) -> None:
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


async def test_is_a_sink(tmp_path: Path) -> None:
    """ParquetSink satisfies the Sink protocol and declares itself idempotent."""
    sink = ParquetSink(tmp_path)
    assert (True, True) == (isinstance(sink, Sink), sink.idempotent)


async def test_file_names_follow_positions(tmp_path: Path) -> None:
    """Each batch becomes one file named by its partition and first and last offsets."""
    await write_all(ParquetSink(tmp_path), batch_of(numbered(0, 1)), batch_of([{"n": 2}], start=2))
    expected = [
        "00000000000000000000-00000000000000000001.parquet",
        "00000000000000000002-00000000000000000002.parquet",
    ]
    assert (expected, numbered(0, 2)) == (files(tmp_path / "in"), rows(tmp_path / "in"))


async def test_partition_names_are_encoded(tmp_path: Path) -> None:
    """A partition named like a path becomes one percent-encoded folder."""
    await write_all(ParquetSink(tmp_path), batch_of([{"n": 1}], partition="/data/in.jsonl"))
    assert ["%2Fdata%2Fin.jsonl"] == folders(tmp_path)


async def test_replay_skips_stored_records_and_cuts_before_stored_files(tmp_path: Path) -> None:
    """A replay skips what stored files hold and fills only the gaps, each position once."""
    await write_all(
        ParquetSink(tmp_path), batch_of(numbered(0, 4)), batch_of(numbered(10, 14), start=10)
    )
    sink = ParquetSink(tmp_path)
    await write_all(sink, batch_of(numbered(0, 19)))
    expected = [
        "00000000000000000000-00000000000000000004.parquet",
        "00000000000000000005-00000000000000000009.parquet",
        "00000000000000000010-00000000000000000014.parquet",
        "00000000000000000015-00000000000000000019.parquet",
    ]
    assert (expected, numbered(0, 19)) == (files(tmp_path / "in"), rows(tmp_path / "in"))
    assert (10, 2) == (sink.statistics().records_skipped, sink.statistics().files_written)


async def test_max_rows_cuts_files_and_row_groups_split_them(tmp_path: Path) -> None:
    """Files hold ``max_rows`` rows across batches; row groups hold ``row_group_rows``."""
    sink = ParquetSink(tmp_path, max_rows=5, row_group_rows=2, compression="snappy")
    await write_all(sink, batch_of(numbered(0, 2)), batch_of(numbered(3, 6), start=3))
    names = files(tmp_path / "in")
    metadata = pq.ParquetFile(tmp_path / "in" / names[0]).metadata
    assert ["00000000000000000000-00000000000000000004.parquet"] == names[:1]
    assert (3, "SNAPPY") == (metadata.num_row_groups, metadata.row_group(0).column(0).compression)
    assert numbered(0, 6) == rows(tmp_path / "in")


async def test_records_are_held_until_their_file_is_stored(tmp_path: Path) -> None:
    """A batch's ack stays retained while its records wait in a file not yet stored."""
    done: list[bool] = []
    ack = Ack(lambda: done.append(True))
    sink = ParquetSink(tmp_path, max_rows=10)
    await sink.open()
    await sink.write(batch_of(numbered(0, 2), ack=ack))
    ack.release()  # the runtime's own reference, released when write returns
    held = (list(done), files(tmp_path / "in"))
    await sink.flush()
    assert ([], []) == held
    assert [True] == done


async def test_declared_schema_is_kept(tmp_path: Path) -> None:
    """A declared schema types the columns, and absent fields are nulls."""
    schema = pa.schema([pa.field("n", pa.int32()), pa.field("name", pa.string())])
    await write_all(ParquetSink(tmp_path, schema=schema), batch_of([{"n": 1}]))
    table = pq.read_table(tmp_path / "in")
    assert (schema, [{"n": 1, "name": None}]) == (table.schema, table.to_pylist())


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("text", "expected a dict, got str"),
        ({"n": 1, "extra": 2}, "field 'extra' is not in the schema"),
        ({"n": "1"}, "column 'n' is int64, the value is string"),
        ({"n": 1.5}, "column 'n' is int64, the value is double"),
        ({"n": None}, "column 'n' may not be null"),
        ({"n": 1 << 70}, "mixed types"),
    ],
)
async def test_a_record_that_does_not_fit_is_a_data_error(
    tmp_path: Path, record: Any, problem: str
) -> None:
    """A record that does not fit the schema raises DataError naming it; nothing is taken."""
    schema = pa.schema([pa.field("n", pa.int64(), nullable=False)])
    sink = ParquetSink(tmp_path, schema=schema)
    await sink.open()
    with pytest.raises(DataError, match="the record at in@7") as caught:
        await sink.write(batch_of([record], start=7))
    await sink.flush()
    assert (True, "schema", []) == (
        problem in str(caught.value),
        caught.value.reason,
        files(tmp_path),
    )


async def test_every_records_fields_count(tmp_path: Path) -> None:
    """A field only a later record of a batch has is refused too, naming that record."""
    sink = ParquetSink(tmp_path)
    await sink.open()
    await sink.write(batch_of([{"n": 0}]))
    with pytest.raises(DataError, match=r"the record at in@2: field 'extra'"):
        await sink.write(batch_of([{"n": 1}, {"n": 2, "extra": 2}], start=1))
    await sink.flush()
    assert [{"n": 0}] == rows(tmp_path / "in")


async def test_a_field_in_place_of_another_is_refused(tmp_path: Path) -> None:
    """Same field count, one name swapped: the unknown field is refused, never dropped."""
    schema = pa.schema([("n", pa.int64()), ("s", pa.string())])
    sink = ParquetSink(tmp_path, schema=schema)
    await sink.open()
    with pytest.raises(DataError, match=r"the record at in@1: field 't'"):
        await sink.write(batch_of([{"n": 0, "s": "a"}, {"n": 1, "t": "b"}]))
    await sink.write(batch_of([{"s": "c", "n": 2}, {"n": 3, "s": "d"}], start=2))
    await sink.flush()
    assert [{"n": 2, "s": "c"}, {"n": 3, "s": "d"}] == rows(tmp_path / "in")


async def test_a_struct_may_not_lose_fields(tmp_path: Path) -> None:
    """A nested field the declared struct lacks is refused, never dropped."""
    schema = pa.schema([("point", pa.struct([("x", pa.int64())]))])
    sink = ParquetSink(tmp_path, schema=schema)
    await sink.open()
    with pytest.raises(DataError, match="column 'point'"):
        await sink.write(batch_of([{"point": {"x": 1, "y": 2}}]))
    await sink.write(batch_of([{"point": {"x": 1}}]))
    await sink.flush()
    assert [{"point": {"x": 1}}] == rows(tmp_path / "in")


async def test_values_stay_out_of_errors(tmp_path: Path) -> None:
    """A value that does not fit is not quoted in the error (it may be personal data)."""
    sink = ParquetSink(tmp_path, schema=pa.schema([("n", pa.int64())]))
    await sink.open()
    with pytest.raises(DataError) as caught:
        await sink.write(batch_of([{"n": "secret@example.com"}]))
    assert "secret" not in str(caught.value)


async def test_bad_records_go_to_the_dead_letter_store(tmp_path: Path) -> None:
    """In a pipeline, records that do not fit are dead-lettered and the rest is written."""
    values: list[Any] = [{"n": 0}, {"n": "zero"}, {"n": 2}, [3], {"n": 4}]
    pipeline = (
        riprap.Pipeline(
            "to-parquet",
            checkpoint_path=str(tmp_path / "state.db"),
            dead_letter=SqliteDeadLetters(tmp_path / "dlq.db"),
            batch_size=5,
        )
        .source(IterableSource("numbers", values))
        .sink(ParquetSink(tmp_path / "out", schema=pa.schema([("n", pa.int64())])))
    )
    report = await pipeline.run()
    letters = list(read_dead_letters(tmp_path / "dlq.db"))
    assert "completed" == report.outcome
    assert [{"n": 0}, {"n": 2}, {"n": 4}] == rows(tmp_path / "out" / "memory")
    assert [(1, "schema"), (3, "schema")] == [(letter.offset, letter.reason) for letter in letters]


async def test_inferred_schema_comes_from_the_first_records(tmp_path: Path) -> None:
    """Without a declared schema, the first batch sets it and later records must fit."""
    sink = ParquetSink(tmp_path)
    await sink.open()
    await sink.write(batch_of([{"n": 1, "s": "a"}]))
    with pytest.raises(DataError, match="column 's' is string"):
        await sink.write(batch_of([{"n": 2, "s": 5}], start=1))
    await sink.flush()
    assert [{"n": 1, "s": "a"}] == rows(tmp_path / "in")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_rows", 0),
        ("max_age", -1.0),
        ("row_group_rows", 0),
        ("compression", "zip"),
        ("schema", {}),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, option: str, value: Any) -> None:
    """An invalid option is a ConfigError that names it."""
    with pytest.raises(ConfigError, match=option):
        ParquetSink(tmp_path, **{option: value})


def located(batch: Batch) -> Batch:
    """``batch`` with an origin the sink must locate item by item (the general path)."""
    return riprap.Batch(batch.items, batch.ack, DropsOrigin(batch.origin, []))


@pytest.mark.parametrize("origin", [lambda b: b, located], ids=["straight", "located"])
async def test_straight_batches_are_written_as_located_ones(
    tmp_path: Path, origin: Callable[[Batch], Batch]
) -> None:
    """Straight from the source or located item by item: same files, same skips, same errors."""
    point = pa.struct([("x", pa.int64())])
    schema = pa.schema([("n", pa.int64()), ("tag", pa.string()), ("point", point)])
    records = [{"n": n, "tag": None, "point": {"x": n} if n % 2 else None} for n in range(9)]
    await write_all(ParquetSink(tmp_path, schema=schema), origin(batch_of(records[3:6], start=3)))
    sink = ParquetSink(tmp_path, schema=schema, max_rows=4)
    await sink.open()
    with pytest.raises(DataError, match=r"the record at in@2: field 'extra'"):
        await sink.write(origin(batch_of([*records[:2], {**records[2], "extra": 1}])))
    await sink.write(origin(batch_of(records[:3])))
    await sink.write(origin(batch_of(records[3:], start=3)))
    await sink.flush()
    expected_files = [
        "00000000000000000000-00000000000000000002.parquet",
        "00000000000000000003-00000000000000000005.parquet",
        "00000000000000000006-00000000000000000008.parquet",
    ]
    assert (expected_files, records) == (files(tmp_path / "in"), rows(tmp_path / "in"))
    assert 3 == sink.statistics().records_skipped


async def lines_to_parquet(path: Path, out: Path, batch_size: int) -> list[tuple[Any, ...]]:
    """Run ``path`` (JSON Lines, decoded by the source) into Parquet; the dead letters, sorted."""
    schema = pa.schema(
        [("n", pa.int64()), ("tag", pa.string()), ("point", pa.struct([("x", pa.int64())]))]
    )
    pipeline = (
        riprap.Pipeline(
            "lines-to-parquet",
            checkpoint_path=str(out / "state.db"),
            dead_letter=SqliteDeadLetters(out / "dlq.db"),
            batch_size=batch_size,
        )
        .source(JsonLinesSource(str(path), decode=True))
        .sink(ParquetSink(out / "table", schema=schema, max_rows=4))
    )
    report = await pipeline.run()
    assert "completed" == report.outcome
    letters = read_dead_letters(out / "dlq.db")
    return sorted((letter.offset or 0, letter.reason, letter.value) for letter in letters)


async def test_json_lines_in_full_batches_land_as_in_one_careful_batch(tmp_path: Path) -> None:
    """Batches of lines read in full runs give the rows and dead letters of one careful batch."""
    lines = [
        b'{"n": 0, "tag": "a", "point": {"x": 1}}',
        b'{"n": 1, "tag": null}',
        b"",
        b'{"n": 2, "point": {"x": 2, "y": 3}}',  # a nested field the schema lacks
        b'{"n": 3, "tag": "b"',  # not JSON
        b'{"n": 4, "tag": 5}',  # a number for a string
        b'{"n": 5, "extra": true}',
        b'{"n": 6, "point": null}',
        b"[7]",
        b'{"n": 8, "tag": "c"}',
        b'{"n": 9}',
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\r\n".join(lines))
    careful = await lines_to_parquet(path, tmp_path / "careful", 1000)
    batched = await lines_to_parquet(path, tmp_path / "batched", 2)
    careful_rows = rows(tmp_path / "careful" / "table" / quote(str(path), safe=""))
    batched_rows = rows(tmp_path / "batched" / "table" / quote(str(path), safe=""))
    assert [0, 1, 6, 8, 9] == [row["n"] for row in careful_rows]
    assert [3, 4, 5, 6, 8] == [offset for offset, *_ in careful]
    assert (careful_rows, careful) == (batched_rows, batched)
