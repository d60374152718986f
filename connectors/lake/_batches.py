"""A batch's items grouped by source partition, in position order, and option checks."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from riprap.lowlevel import SourceOrigin

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from riprap import Batch, SourceBatch

    Where = tuple[SourceBatch, int] | None


def by_partition(batch: Batch, sink: str) -> dict[str, tuple[Sequence[int], Sequence[int]]]:
    """``partition -> (offsets, item indexes)``, each sorted by offset (stably).

    Both are ranges when the items are exactly a source batch's records at
    consecutive positions (the common case): no per-record list is built.

    An unordered step may mix one partition's records within a batch; sorting
    undoes that, so a file or commit always covers a contiguous run of positions.

    Raises:
        RuntimeError: An item's source position is unknown (it has no name or version).
    """
    origin, count = batch.origin, len(batch.items)
    if count and isinstance(origin, SourceOrigin) and count <= len(origin.source):
        # Straight from the source (maps keep this origin): item i is source record i.
        straight = origin.source
        return {straight.partition: (_offsets(straight, range(count)), range(count))}
    wheres = batch.sources()
    if not wheres:
        return {}
    first = wheres[0]
    source = first[0] if first is not None else None
    if source is not None and all(where is not None and where[0] is source for where in wheres):
        # The common case, one source batch behind the whole batch: no per-item grouping.
        at = [where[1] for where in wheres if where is not None]
        parts: dict[str, tuple[Sequence[int], Sequence[int]]]
        parts = {source.partition: (_offsets(source, at), range(len(at)))}
    else:
        parts = dict(_grouped(wheres, sink))
    for partition, (offsets, indexes) in parts.items():
        if any(a > b for a, b in itertools.pairwise(offsets)):
            order = sorted(range(len(offsets)), key=offsets.__getitem__)
            parts[partition] = ([offsets[i] for i in order], [indexes[i] for i in order])
    return parts


def pick(items: list[Any], indexes: Sequence[int]) -> list[Any]:
    """``items`` at ``indexes`` (``items`` itself when that is all of them, in order)."""
    if isinstance(indexes, range) and indexes == range(len(items)):
        return items
    return [items[i] for i in indexes]


def _offsets(source: SourceBatch, at: Sequence[int]) -> Sequence[int]:
    """The offsets of ``source``'s items at ``at``."""
    if source.offsets is not None:
        given = source.offsets
        return [given[i] for i in at]
    if isinstance(at, range) and at.step == 1:
        return range(source.start + at.start, source.start + at.stop)
    start = source.start
    return [start + i for i in at]


def _grouped(wheres: list[Where], sink: str) -> dict[str, tuple[list[int], list[int]]]:
    """Items of several source batches grouped by partition (in batch order)."""
    parts: dict[str, tuple[list[int], list[int]]] = {}
    for index, where in enumerate(wheres):
        if where is None:
            raise RuntimeError(
                f"sink {sink!r}: item {index} has no source position, so the sink "
                "cannot tell a replay from new data"
            )
        source, at = where
        offsets, indexes = parts.setdefault(source.partition, ([], []))
        offsets.append(source.offset_of(at))
        indexes.append(index)
    return parts


def describer(partition: str, offsets: Sequence[int]) -> Callable[[int], str]:
    """``describe(i)``: names the record at ``offsets[i]`` of ``partition`` in errors."""

    def describe(index: int) -> str:
        return f"the record at {partition}@{offsets[index]}"

    return describe
