"""DeltaSink writes data files as batches arrive: memory bounded in bytes, orphans never read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from riprap import SinkContext, SystemClock
from riprap.connectors.lake import DeltaSink

from ._helpers import batch_of

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

FILE_BYTES = 256 << 10
BATCHES = 120
PER_BATCH = 50
"""120 batches of 50 records of about 1 KiB: some 6 MiB, over 20 times ``FILE_BYTES``."""
SPILL = 300
"""Records of one write that fill more than ``FILE_BYTES``: written out as a file at once."""


def held(path: Path) -> DeltaSink:
    """A sink that commits only on flush (no count or age reached), bound with room to hold."""
    sink = DeltaSink(path, new_columns="refuse", file_bytes=FILE_BYTES, max_age=3600.0)
    sink.bind(
        SinkContext(pipeline="p", clock=SystemClock(), max_in_flight=10 * BATCHES * PER_BATCH)
    )
    return sink


def wide(first: int, count: int) -> list[dict[str, Any]]:
    """``count`` records of about 1 KiB each, numbered from ``first``."""
    return [{"n": i, "text": f"{i:08d}" * 128} for i in range(first, first + count)]


def parquet_files(path: Path) -> set[str]:
    """The data files in the table's directory, referenced or not."""
    return {p.name for p in path.glob("*.parquet")}


async def flood(sink: DeltaSink) -> list[int]:
    """Write every batch; the bytes the sink buffers after each write."""
    buffered = []
    for k in range(BATCHES):
        await sink.write(batch_of(wide(k * PER_BATCH, PER_BATCH), start=k * PER_BATCH))
        buffered.append(sink.statistics().bytes_buffered)
    return buffered


async def test_records_between_commits_are_written_out_not_held(tmp_path: Path) -> None:
    """A byte flood between commits stays under ``file_bytes`` in memory; one commit adds all."""
    sink = held(tmp_path)
    await sink.open()
    buffered = await flood(sink)
    waiting = sink.statistics()
    await sink.flush()
    await sink.aclose()
    table = DeltaTable(str(tmp_path))
    assert max(buffered) < FILE_BYTES
    assert (BATCHES * PER_BATCH, False) == (waiting.records_pending, waiting.files_pending < 20)
    assert (0, BATCHES * PER_BATCH) == (table.version(), table.count())
    assert parquet_files(tmp_path) == {uri.rsplit("/", 1)[-1] for uri in table.file_uris()}


async def test_files_of_a_run_killed_before_its_commit_are_orphans(tmp_path: Path) -> None:
    """Uncommitted files are in no version; a replay commits each record once; vacuum finds them."""
    first = held(tmp_path)
    await first.open()
    await first.write(batch_of(wide(0, PER_BATCH)))
    await first.flush()
    await first.write(batch_of(wide(PER_BATCH, SPILL), start=PER_BATCH))  # a file, no commit
    orphans = parquet_files(tmp_path) - {
        uri.rsplit("/", 1)[-1] for uri in DeltaTable(str(tmp_path)).file_uris()
    }
    await first.aclose()  # as a kill leaves it: files written, commit never made
    again = held(tmp_path)
    await again.open()
    await again.write(batch_of(wide(0, PER_BATCH + SPILL)))
    await again.flush()
    await again.aclose()
    table = DeltaTable(str(tmp_path))
    numbers = sorted(row["n"] for row in table.to_pyarrow_table(columns=["n"]).to_pylist())
    swept = table.vacuum(0, dry_run=True, enforce_retention_duration=False, full=True)
    assert (1, list(range(PER_BATCH + SPILL))) == (len(orphans), numbers)
    assert orphans == {uri.rsplit("/", 1)[-1] for uri in swept}


@pytest.mark.parametrize(
    "records",
    [
        [{"n": 0, "tags": [1, 2]}, {"n": 1, "tags": None}, {"n": 2, "tags": []}],
        [{"n": 0, "point": {"x": 1, "y": None}}, {"n": 1, "point": None}],
    ],
    ids=["list: cast to Delta's item name", "struct: Delta's types"],
)
async def test_data_files_hold_nested_values_and_nulls(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    """Data files hold the table's types (cast only when needed); nested values and nulls kept."""
    sink = DeltaSink(tmp_path, new_columns="refuse")
    sink.bind(SinkContext(pipeline="p", clock=SystemClock()))
    await sink.open()
    await sink.write(batch_of(records))
    await sink.flush()
    delta = DeltaTable(str(tmp_path))
    stored = pa.schema(delta.schema().to_arrow())
    (data_file,) = delta.file_uris()
    assert stored == pq.read_schema(data_file)  # the file holds the table's own types
    assert records == sorted(delta.to_pyarrow_table().to_pylist(), key=lambda row: row["n"])
