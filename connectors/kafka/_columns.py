"""A batch's source metadata as columns (keys, headers, timestamps), for the Kafka sink.

The sink needs each item's source key, headers and timestamp. Asking the
batch for every item's ``(source batch, index)`` pair builds a tuple per
record; in the common shape (the items of one source batch, some of them
dropped by a filter) the indexes come straight from the origin instead, and
each column is one C-level pass over the source batch's own list.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING, Any

from riprap.lowlevel import DropsOrigin, SourceOrigin

from ._codecs import parse_partition

if TYPE_CHECKING:
    from collections.abc import Sequence

    from riprap import Batch, SourceBatch
    from riprap.lowlevel import Headers, Origin


@dataclass(frozen=True, slots=True)
class Columns:
    """Per item of a batch: its source key, headers, timestamp and Kafka partition number.

    A column is ``None`` when no item has a value in it.
    """

    keys: Sequence[Any] | None
    headers: Sequence[Headers] | None
    timestamps: Sequence[float | None] | None
    homes: Sequence[int | None] | None
    """The partition number of the source partition each item came from (``"topic:N"``)."""


def columns(batch: Batch) -> Columns:
    """The source columns of ``batch``'s items, in item order."""
    rows = source_rows(batch.origin, len(batch.items))
    if rows is not None:
        return _one_source(*rows)
    return _mixed(batch.sources())


def source_rows(origin: Origin | None, count: int) -> tuple[SourceBatch, Sequence[int]] | None:
    """The one source batch ``count`` items came from and each item's index in it.

    ``None`` when the origin is of another shape (joined batches, expanded
    items, unknown): the caller then locates every item.
    """
    if origin.__class__ is SourceOrigin:
        source: SourceBatch = origin.source
        return (source, range(count)) if count == len(source) else None
    if origin.__class__ is DropsOrigin:
        drops: list[int] = origin.drops
        parent = source_rows(origin.parent, count + len(drops))
        if parent is None:
            return None
        source, rows = parent
        keep = bytearray(b"\x01") * len(rows)
        for k, at in enumerate(drops):  # the k-th drop removed parent item at + k
            keep[at + k] = 0
        return source, list(compress(rows, keep))
    return None


def _one_source(source: SourceBatch, rows: Sequence[int]) -> Columns:
    whole = isinstance(rows, range)

    def column(values: list[Any] | None) -> Sequence[Any] | None:
        if values is None:
            return None
        return values if whole else list(map(values.__getitem__, rows))

    headers = source.headers
    if headers is not None and not any(headers):
        headers = None  # no record has a header: no column to carry
    home = _partition_number(source.partition)
    return Columns(
        column(source.keys),
        column(headers),
        column(source.timestamps),
        None if home is None else [home] * len(rows),
    )


def _mixed(wheres: list[tuple[SourceBatch, int] | None]) -> Columns:
    """Columns of items from several source batches (or none), located one by one."""
    keys: list[Any] = []
    headers: list[Headers] = []
    stamps: list[float | None] = []
    homes: list[int | None] = []
    current: SourceBatch | None = None
    home: int | None = None
    for where in wheres:
        if where is None:
            keys.append(None)
            headers.append(())
            stamps.append(None)
            homes.append(None)
            continue
        source, i = where
        if source is not current:
            current = source
            home = _partition_number(source.partition)
        keys.append(None if source.keys is None else source.keys[i])
        headers.append(() if source.headers is None else source.headers[i])
        stamps.append(None if source.timestamps is None else source.timestamps[i])
        homes.append(home)
    return Columns(keys, headers if any(headers) else None, stamps, homes)


def _partition_number(name: str) -> int | None:
    """The Kafka partition number a source partition name carries, if it is ``topic:N``."""
    try:
        return parse_partition(name)[1]
    except ValueError:
        return None
