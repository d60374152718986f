"""ParquetSource and the bound in bytes: a row weighs its row group's bytes in memory, shared.

A batch says what its rows weigh (the Arrow row group's bytes over its rows)
and ends with the row that reaches ``SourceContext.max_batch_bytes``.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from riprap.connectors.lake import ParquetSource
from tests._sources import read_to_end

if TYPE_CHECKING:
    from pathlib import Path


pytestmark = pytest.mark.anyio

KIB = 1024
TEXT = 100 * KIB


def write_heavy(path: Path, count: int, group: int) -> None:
    """``count`` rows with a 100 KiB text each, in row groups of ``group``."""
    table = pa.table({"n": range(count), "s": [f"{i:06}".ljust(TEXT, ".") for i in range(count)]})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=group)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())


def about(rows: int) -> range:
    """What ``rows`` test rows weigh in memory: their texts, plus a few bytes each for the
    number, the text's offset and validity."""
    return range(rows * TEXT, rows * (TEXT + 32))


async def test_batches_end_at_the_byte_limit_and_say_their_weight(tmp_path: Path) -> None:
    """Ten rows of 100 KiB in row groups of five, limit 250,000 bytes: batches of three rows
    (the third reaches it), cut again at each row group's end; each batch weighs its rows."""
    write_heavy(tmp_path / "in" / "a.parquet", 10, group=5)
    batches = await read_to_end(ParquetSource(tmp_path / "in"), max_batch_bytes=250_000)
    rows = [len(b) for b in batches if b.values]
    assert [3, 2, 3, 2] == rows
    assert all(b.nbytes in about(len(b)) for b in batches if b.values)
    assert list(range(10)) == [r["n"] for b in batches for r in b.values]


async def test_without_a_limit_rows_are_cut_by_count_and_still_weighed(tmp_path: Path) -> None:
    write_heavy(tmp_path / "in" / "a.parquet", 10, group=10)
    batches = [b for b in await read_to_end(ParquetSource(tmp_path / "in")) if b.values]
    assert [10] == [len(b) for b in batches]
    assert batches[0].nbytes in about(10)
