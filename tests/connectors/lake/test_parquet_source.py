"""ParquetSource: rows by file, resumes mid-file at a row, quarantines corrupt files."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import riprap
from riprap import SourceContext
from riprap.connectors.lake import FILE_COMPLETE, ParquetSink, ParquetSource, QuarantinedFile
from riprap.connectors.memory import MemorySink

from ._helpers import rows

if TYPE_CHECKING:
    from pathlib import Path

    from riprap import SourceBatch

pytestmark = pytest.mark.anyio


def parquet_bytes(first: int, count: int, group: int = 300) -> bytes:
    """A Parquet file of rows ``{"n": i, "s": ...}`` from ``first``, in row groups of ``group``."""
    table = pa.table(
        {"n": range(first, first + count), "s": [f"row-{i:05d}" * 4 for i in range(count)]}
    )
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=group, compression="snappy", write_page_checksum=True)
    return out.getvalue()


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def read_all(
    source: ParquetSource, positions: dict[str, int] | None = None
) -> list[SourceBatch]:
    """Open the source at ``positions`` and read every batch (at most 200 rows each)."""
    await source.open(SourceContext(pipeline="p", positions=positions or {}))
    batches: list[SourceBatch] = []
    try:
        for _ in range(1000):
            batch = await source.read(200)
            if batch is None:
                return batches
            batches.append(batch)
    finally:
        await source.aclose()
    raise AssertionError("the source did not end")


async def test_files_are_partitions_read_in_order(tmp_path: Path) -> None:
    """Each file is a partition, read whole in path order; offsets are row indexes."""
    write_file(tmp_path / "in" / "b.parquet", parquet_bytes(1000, 10))
    write_file(tmp_path / "in" / "a" / "x.parquet", parquet_bytes(0, 700))
    write_file(tmp_path / "in" / "notes.txt", b"not a table")
    batches = await read_all(ParquetSource(tmp_path / "in"))
    numbers = [value["n"] for batch in batches for value in batch.values]
    spans = [(batch.partition.rpartition("/")[2], batch.start, batch.end) for batch in batches]
    assert [*range(700), *range(1000, 1010)] == numbers
    expected = [("x.parquet", 0, 200), ("x.parquet", 200, 300), ("x.parquet", 300, 500)]
    assert expected == spans[:3]
    assert ("b.parquet", 0, 10) == spans[-1]


async def test_a_restart_resumes_mid_file_at_its_row(tmp_path: Path) -> None:
    """A checkpointed position resumes inside the row group that holds it."""
    write_file(tmp_path / "a.parquet", parquet_bytes(0, 700))
    write_file(tmp_path / "b.parquet", parquet_bytes(1000, 5))
    source = ParquetSource(tmp_path)
    partition = source.partition_of("a.parquet")
    batches = await read_all(source, {partition: 450, source.partition_of("b.parquet"): 5})
    numbers = [value["n"] for batch in batches for value in batch.values]
    assert (list(range(450, 700)), 450) == (numbers, batches[0].start)
    assert (1, 1) == (source.statistics().files_read, source.statistics().files_skipped)


@pytest.mark.parametrize(
    ("damage", "row"),
    [
        (lambda data: b"not parquet at all", 0),
        (lambda data: data[: len(data) // 2], 0),
        (lambda data: data[:5000] + bytes(b ^ 0xFF for b in data[5000:6000]) + data[6000:], 300),
    ],
    ids=["not-parquet", "truncated", "damaged-row-group"],
)
async def test_a_corrupt_file_is_quarantined_and_the_rest_goes_on(
    tmp_path: Path, damage: Any, row: int
) -> None:
    """A file that cannot be decoded is set aside with a reason file; other files are read."""
    data = parquet_bytes(0, 700)
    write_file(tmp_path / "in" / "a.parquet", damage(data))
    write_file(tmp_path / "in" / "b.parquet", parquet_bytes(1000, 5))
    seen: list[QuarantinedFile] = []
    source = ParquetSource(tmp_path / "in", quarantine=tmp_path / "bad", on_quarantine=seen.append)
    batches = await read_all(source)
    bad = source.partition_of("a.parquet")
    completion = [(b.start, b.end) for b in batches if b.partition == bad and not b.values]
    reason = orjson.loads((tmp_path / "bad" / "a.parquet.reason.json").read_bytes())
    assert [(row, FILE_COMPLETE)] == completion
    assert ([bad], [row]) == ([q.partition for q in seen], [q.row for q in seen])
    assert (bad, row) == (reason["source"], reason["row"])
    assert damage(data) == (tmp_path / "bad" / "a.parquet").read_bytes()
    assert list(range(1000, 1005)) == [
        v["n"] for b in batches if b.partition != bad for v in b.values
    ]


async def test_parquet_to_parquet_pipeline_counts_quarantines(tmp_path: Path) -> None:
    """A pipeline copies good files once, reports the corrupt one, and a rerun reads nothing."""
    write_file(tmp_path / "in" / "a.parquet", parquet_bytes(0, 50, group=20))
    write_file(tmp_path / "in" / "b.parquet", b"PAR1 but no more")
    write_file(tmp_path / "in" / "c.parquet", parquet_bytes(50, 30, group=20))

    def build() -> riprap.Pipeline:
        return (
            riprap.Pipeline("copy", checkpoint_path=str(tmp_path / "state.db"), batch_size=16)
            .source(ParquetSource(tmp_path / "in"))
            .sink(ParquetSink(tmp_path / "out"))
        )

    first = await build().run()
    second = await build().run()
    copied = [row["n"] for folder in sorted((tmp_path / "out").iterdir()) for row in rows(folder)]
    assert ("completed", {"files_quarantined": 1}) == (first.outcome, dict(first.source_outcomes))
    assert (list(range(80)), 0) == (copied, second.records_in)


async def test_columns_select_what_is_read(tmp_path: Path) -> None:
    """``columns`` reads only the named columns."""
    write_file(tmp_path / "a.parquet", parquet_bytes(0, 3))
    batches = await read_all(ParquetSource(tmp_path, columns=["n"]))
    assert [{"n": 0}, {"n": 1}, {"n": 2}] == batches[0].values


async def test_the_report_counts_a_quarantine_in_a_memory_run(tmp_path: Path) -> None:
    """The run report names the quarantine count, so an alert can fire on it."""
    write_file(tmp_path / "a.parquet", b"garbage")
    sink = MemorySink("out")
    pipeline = (
        riprap.Pipeline("q", checkpoint_path=str(tmp_path / "s.db"))
        .source(ParquetSource(tmp_path))
        .sink(sink)
    )
    report = await pipeline.run()
    assert ({"files_quarantined": 1}, []) == (dict(report.source_outcomes), sink.values)
    assert "files_quarantined" in report.format()


async def test_a_file_written_over_under_its_name_is_refused(tmp_path: Path) -> None:
    """Read whole, then replaced by a longer file: the next run names it and reads nothing."""
    store = tmp_path / "checkpoints.db"
    write_file(tmp_path / "in" / "daily.parquet", parquet_bytes(0, 100))

    async def run() -> list[int]:
        sink = MemorySink()
        pipeline = (
            riprap.Pipeline("daily", checkpoint=riprap.checkpoints.SqliteCheckpoints(store))
            .source(ParquetSource(tmp_path / "in"))
            .sink(sink)
        )
        await pipeline.run()
        return [value["n"] for value in sink.values]

    assert list(range(100)) == await run()
    assert [] == await run()  # unchanged: skipped as read
    write_file(tmp_path / "in" / "daily.parquet", parquet_bytes(5000, 300))
    with pytest.raises(riprap.checkpoints.CheckpointError) as caught:
        await run()
    partition = ParquetSource(tmp_path / "in").partition_of("daily.parquet")
    assert str(caught.value).startswith(
        f"{partition}: the checkpoint resumes at row 100, but the file is not the one"
    )


async def test_a_resume_inside_a_file_checks_its_footer(tmp_path: Path) -> None:
    """The same rows written again with other row groups are another file: refused."""
    write_file(tmp_path / "a.parquet", parquet_bytes(0, 700))
    source = ParquetSource(tmp_path)
    partition = source.partition_of("a.parquet")
    await read_all(source)
    identity = source.identities()[partition]
    await source.open(
        SourceContext(pipeline="p", positions={partition: 450}, identities={partition: identity})
    )
    batch = await source.read(100)
    await source.aclose()
    assert batch is not None
    assert (450, 450) == (batch.start, batch.values[0]["n"])
    write_file(tmp_path / "a.parquet", parquet_bytes(0, 700, group=100))
    context = SourceContext(
        pipeline="p", positions={partition: 450}, identities={partition: identity}
    )
    await source.open(context)
    with pytest.raises(riprap.checkpoints.CheckpointError, match="resumes at row 450"):
        await source.read(100)
    await source.aclose()
