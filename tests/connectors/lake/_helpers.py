"""Batches as a source would hand them, and reading back what the lake sinks wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from riprap import Batch, SourceBatch
from riprap.lowlevel import Ack, SourceOrigin

if TYPE_CHECKING:
    from pathlib import Path


def batch_of(
    values: list[Any], partition: str = "in", start: int = 0, ack: Ack | None = None
) -> Batch:
    """A batch straight from a source partition, starting at ``start``."""
    source = SourceBatch(partition, values, start=start)
    return Batch(list(values), ack or Ack(lambda: None), SourceOrigin(source))


def files(folder: Path) -> list[str]:
    """The Parquet file names in ``folder``, sorted."""
    return sorted(p.name for p in folder.glob("*.parquet"))


def folders(root: Path) -> list[str]:
    """The names of the folders in ``root``, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def rows(folder: Path) -> list[dict[str, Any]]:
    """Every row of every Parquet file in ``folder``, in file-name order."""
    out: list[dict[str, Any]] = []
    for name in files(folder):
        out.extend(pq.read_table(folder / name).to_pylist())
    return out
