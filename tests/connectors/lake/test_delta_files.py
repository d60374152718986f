"""DeltaSink writes data files as batches arrive: memory bounded in bytes, orphans never read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
