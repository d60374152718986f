"""DeltaSource: a table's rows at a version, resumed by file and row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from riprap import ConfigError, SinkContext, SourceContext, SystemClock
from riprap.connectors.lake import DeltaSink, DeltaSource

from ._helpers import batch_of

if TYPE_CHECKING:
    from pathlib import Path

    from riprap import SourceBatch

pytestmark = pytest.mark.anyio


async def make_table(path: Path) -> None:
    """A table of two versions: rows 0..9, then rows 10..14."""
    sink = DeltaSink(path, new_columns="refuse")
    sink.bind(SinkContext(pipeline="p", clock=SystemClock()))
    await sink.open()
    await sink.write(batch_of([{"n": i} for i in range(10)]))
    await sink.write(batch_of([{"n": i} for i in range(10, 15)], start=10))
    await sink.aclose()


async def read_all(
    source: DeltaSource, positions: dict[str, int] | None = None
) -> list[SourceBatch]:
    """Open the source at ``positions`` and read every batch (at most 4 rows each)."""
    await source.open(SourceContext(pipeline="p", positions=positions or {}))
    batches: list[SourceBatch] = []
    try:
        for _ in range(1000):
            batch = await source.read(4)
            if batch is None:
                return batches
            batches.append(batch)
    finally:
        await source.aclose()
    raise AssertionError("the source did not end")


def numbers(batches: list[SourceBatch]) -> list[Any]:
    """The ``n`` of every value read, sorted."""
    return sorted(value["n"] for batch in batches for value in batch.values)


async def test_reads_the_latest_version_or_an_older_one(tmp_path: Path) -> None:
    """The latest version holds every row; version 0 only the first commit's."""
    await make_table(tmp_path)
    latest = await read_all(DeltaSource(tmp_path))
    first = await read_all(DeltaSource(tmp_path, version=0))
    assert (list(range(15)), list(range(10))) == (numbers(latest), numbers(first))


async def test_a_restart_resumes_each_file_at_its_row(tmp_path: Path) -> None:
    """Positions are per data file: a restart reads only the rows after them."""
    await make_table(tmp_path)
    files = DeltaTable(str(tmp_path)).file_uris()
    positions = {files[0]: 3, files[1]: 1 << 62}
    batches = await read_all(DeltaSource(tmp_path), positions)
    assert {files[0]} == {batch.partition for batch in batches}
    assert 3 == batches[0].start


async def test_a_partitioned_table_is_refused(tmp_path: Path) -> None:
    """A partitioned table (values in the log, not the files) is a ConfigError on open."""
    write_deltalake(str(tmp_path), pa.table({"n": [1], "p": ["a"]}), partition_by=["p"])
    with pytest.raises(ConfigError, match="partitioned"):
        await read_all(DeltaSource(tmp_path))
