"""The in-flight bound in bytes: a source waits while ``max_in_flight_bytes`` are in flight.

Sources that know what they read say so in ``SourceBatch.nbytes`` (the file,
S3, Parquet, Delta, Kafka and PostgreSQL CDC sources do: each has its own
tests) and end a batch at ``SourceContext.max_batch_bytes``; the bound is
checked before each read, beside the bound in records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.lowlevel
import pytest

import riprap
from riprap.connectors.files import JsonLinesSource
from riprap.testing import wait_until
from tests._sinks import GatedSink
from tests._sources import Weighed, bounded_in_bytes, settle

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

MIB = 2**20


class HeavySource:
    """``count`` records of 4 MiB each (as claimed), a batch of one at a time; counts reads."""

    name = "heavy"

    def __init__(self, count: int) -> None:
        self.count = count
        self.reads = 0
        self.context: riprap.SourceContext | None = None

    async def open(self, context: riprap.SourceContext) -> None:
        self.context = context

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        await anyio.lowlevel.checkpoint()
        if self.reads >= self.count:
            return None
        self.reads += 1
        start = self.reads - 1
        return riprap.SourceBatch("heavy", [start], start=start, nbytes=4 * MIB)

    async def aclose(self) -> None:
        return None


async def test_the_source_waits_while_the_bytes_are_in_flight() -> None:
    """A stalled sink: 8 MiB read, then no more; released, every record goes through.

    Without the bound the source reads on until the queue to the sink is full
    (four batches, plus the one written and the one being sent).
    """
    source, sink = HeavySource(100), GatedSink()
    async with bounded_in_bytes("bytes", source, sink, 8 * MIB).open() as running:
        await wait_until(lambda: source.reads >= 2, what="two reads")
        await settle()
        assert 2 == source.reads
        sink.gate.set()
        report = await running.wait()
    assert list(range(100)) == sink.values
    assert {"heavy": 100} == report.positions
    assert source.context is not None
    assert MIB == source.context.max_batch_bytes  # an eighth of the bound


async def test_records_only_without_a_byte_bound() -> None:
    """``max_in_flight_bytes=None``: the source reads on until the queue holds it up."""
    source, sink = HeavySource(100), GatedSink()
    async with bounded_in_bytes("bytes", source, sink, None).open() as running:
        await wait_until(lambda: source.reads > 2, what="a third read")
        sink.gate.set()
        await running.wait()
    assert source.context is not None
    assert source.context.max_batch_bytes is None


def write_lines(path: Path, count: int, size: int) -> None:
    """``count`` JSON lines of about ``size`` bytes each."""
    with path.open("w") as file:
        for i in range(count):
            file.write(f'{{"i": {i}, "pad": "{"x" * (size - 30)}"}}\n')


async def test_a_file_of_long_lines_is_read_a_few_mib_at_a_time(tmp_path: Path) -> None:
    """40 lines of 1 MiB behind a stalled sink: batches of one line, 4 MiB read, then none."""
    path = tmp_path / "long.jsonl"
    write_lines(path, 40, MIB)
    source = Weighed(JsonLinesSource(path, decode=True))
    reads = source.weights
    sink = GatedSink()
    async with bounded_in_bytes("bytes", source, sink, 4 * MIB).open() as running:
        await wait_until(lambda: sum(reads) >= 4 * MIB, what="4 MiB read")
        await settle()
        # Reading stopped with the batch that brought the bytes to the bound
        # (one batch of the whole 40 MiB file before).
        assert sum(reads[:-1]) < 4 * MIB <= sum(reads)
        assert all(MIB - 100 <= nbytes <= MIB for nbytes in reads)
        sink.gate.set()
        report = await running.wait()
    assert list(range(40)) == [row["i"] for row in sink.values]
    assert {"long.jsonl": 40} == {k.rsplit("/", 1)[-1]: v for k, v in report.positions.items()}


async def test_the_bound_in_bytes_is_checked() -> None:
    with pytest.raises(riprap.ConfigError, match="max_in_flight_bytes"):
        riprap.Pipeline("p", max_in_flight_bytes=0)
