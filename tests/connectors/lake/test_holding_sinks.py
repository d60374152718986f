"""Sinks that hold records back never stall a run whose holding pins the in-flight bound.

A filter that keeps one record of each source batch makes every held row pin
its whole source batch in flight: a sink waiting for ``max_rows`` rows would
wait for records the source has no room to read. While the source waits for
room, such a sink is flushed before it waits for input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from deltalake import DeltaTable

import riprap
import riprap.checkpoints
from riprap.connectors.lake import DeltaSink, ParquetSink
from riprap.connectors.memory import IterableSource

from ._helpers import rows

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

RECORDS = 20_000
KEEP_EVERY = 1_000
"""One record of each source batch (1,000 at the defaults) is kept."""


def rare(sink: riprap.Sink) -> riprap.Pipeline:
    """Every record, a filter keeping one a source batch, ``sink``, at the defaults."""
    return (
        riprap.Pipeline("rare", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("numbers", [{"n": i} for i in range(RECORDS)]))
        .filter("rare", lambda row: row["n"] % KEEP_EVERY == 0)
        .sink(sink)
    )


async def run_bounded(pipeline: riprap.Pipeline) -> riprap.RunReport:
    with anyio.fail_after(60):  # a stall fails here instead of hanging the suite
        return await pipeline.run()


KEPT = [{"n": n} for n in range(0, RECORDS, KEEP_EVERY)]


async def test_parquet_files_are_cut_while_the_source_waits(tmp_path: Path) -> None:
    report = await run_bounded(rare(ParquetSink(tmp_path, max_rows=1_000)))
    stored: list[dict[str, Any]] = rows(tmp_path / "memory")
    assert KEPT == sorted(stored, key=lambda row: row["n"])
    assert {"memory": RECORDS} == report.positions


async def test_delta_commits_while_the_source_waits(tmp_path: Path) -> None:
    report = await run_bounded(rare(DeltaSink(tmp_path, new_columns="add", max_rows=1_000)))
    stored = DeltaTable(str(tmp_path)).to_pyarrow_table().to_pylist()
    assert KEPT == sorted(stored, key=lambda row: row["n"])
    assert {"memory": RECORDS} == report.positions
