"""ParquetSink and DeltaSink on S3 (the moto server): the same names, replays and commits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from riprap import SinkContext, SourceContext, SystemClock
from riprap.connectors.lake import DeltaSink, ParquetSink, ParquetSource

from ._helpers import batch_of

if TYPE_CHECKING:
    from riprap import Batch
    from riprap.connectors.lake import LakeS3Options

pytestmark = [pytest.mark.s3, pytest.mark.anyio]


async def write_all(sink: ParquetSink | DeltaSink, *batches: Batch) -> None:
    """Open the sink, write the batches, flush and close."""
    sink.bind(SinkContext(pipeline="p", clock=SystemClock()))
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


def listed(files: pafs.S3FileSystem, folder: str) -> list[str]:
    """The object names under ``folder``, sorted."""
    infos = files.get_file_info(pafs.FileSelector(folder, recursive=True))
    return sorted(info.path.removeprefix(folder + "/") for info in infos if info.is_file)


async def test_parquet_objects_follow_positions_and_replays_skip(
    bucket: str, s3: LakeS3Options, s3_files: pafs.S3FileSystem
) -> None:
    """Objects are named by positions, and a replay writes only what no object holds."""
    location = f"s3://{bucket}/out"
    await write_all(ParquetSink(location, s3=s3), batch_of(numbered(0, 4)))
    sink = ParquetSink(location, s3=s3)
    await write_all(sink, batch_of(numbered(0, 9)))
    names = listed(s3_files, f"{bucket}/out")
    expected = [
        "in/00000000000000000000-00000000000000000004.parquet",
        "in/00000000000000000005-00000000000000000009.parquet",
    ]
    table = pq.read_table(f"{bucket}/out/in", filesystem=s3_files)
    assert (expected, 5) == (names, sink.statistics().records_skipped)
    assert numbered(0, 9) == sorted(table.to_pylist(), key=lambda row: row["n"])


async def test_delta_commits_and_replays_on_s3(bucket: str, s3: LakeS3Options) -> None:
    """A table on S3 gets its app transactions, and a replay skips what it holds."""
    location = f"s3://{bucket}/table"
    await write_all(DeltaSink(location, new_columns="refuse", s3=s3), batch_of(numbered(0, 4)))
    await write_all(DeltaSink(location, new_columns="refuse", s3=s3), batch_of(numbered(0, 9)))
    table = DeltaTable(location, storage_options=s3.delta_storage_options())
    rows = sorted(row["n"] for row in table.to_pyarrow_table().to_pylist())
    assert (list(range(10)), 10) == (rows, table.transaction_version("riprap/p/delta/in"))


async def test_parquet_source_reads_and_quarantines_on_s3(
    bucket: str, s3: LakeS3Options, s3_files: pafs.S3FileSystem
) -> None:
    """Files under an S3 prefix are read as partitions; a corrupt one is copied aside."""
    await write_all(ParquetSink(f"s3://{bucket}/in", s3=s3), batch_of(numbered(0, 9)))
    with s3_files.open_output_stream(f"{bucket}/in/zz/bad.parquet") as out:
        out.write(b"not parquet")
    source = ParquetSource(f"s3://{bucket}/in", quarantine=f"s3://{bucket}/bad", s3=s3)
    await source.open(SourceContext(pipeline="p", positions={}))
    values: list[Any] = []
    for _ in range(10):
        batch = await source.read(4)
        if batch is None:
            break
        values.extend(batch.values)
    await source.aclose()
    assert numbered(0, 9) == values
    assert [f"s3://{bucket}/in/zz/bad.parquet"] == [q.partition for q in source.quarantined]
    assert ["zz/bad.parquet", "zz/bad.parquet.reason.json"] == listed(s3_files, f"{bucket}/bad")
