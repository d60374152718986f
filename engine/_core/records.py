"""Records and the batches that carry them between stages.

Queues carry batches, never single records, so per-record cost in the hot path
is a function call. A :class:`Batch` holds plain values plus an :class:`Origin`
that maps each value back to the source record it came from; the mapping is
built lazily (only the dropped or expanded positions are noted) and resolved
only when someone asks: the DLQ, a record-aware stage, a keyed sink.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, final

if TYPE_CHECKING:
    from riprap._core.errors import DataError
    from riprap._runtime.acks import Ack

Headers = Sequence[tuple[str, bytes]]


@final
class Record:
    """One record with its metadata, for stages and sinks that ask for the whole record.

    Attributes:
        value: The payload.
        key: The record key (``None`` when the source has none).
        headers: ``(name, bytes)`` pairs, as consumed.
        timestamp: Event time in seconds since the epoch, when known.
        partition: The source partition the record came from.
        offset: Its position in that partition.
    """

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "value")

    def __init__(
        self,
        value: Any,
        *,
        key: Any = None,
        headers: Headers = (),
        timestamp: float | None = None,
        partition: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.value = value
        self.key = key
        self.headers = headers
        self.timestamp = timestamp
        self.partition = partition
        self.offset = offset

    def replace(self, value: Any) -> Record:
        """Return a copy with a new value and the same metadata."""
        return Record(
            value,
            key=self.key,
            headers=self.headers,
            timestamp=self.timestamp,
            partition=self.partition,
            offset=self.offset,
        )

    def __repr__(self) -> str:
        return f"Record(key={self.key!r}, partition={self.partition!r}, offset={self.offset!r})"


_SOURCE_VALUE: Any = object()
"""Stands for "the source's own value" where ``None`` is a value like any other."""

Where: TypeAlias = tuple["SourceBatch", int] | None
"""The source batch and index an item came from, or ``None`` when unknown."""


@final
class Assignment:
    """One assignment of a partition to a reader (a consumer-group member), shared by the
    batches read under it.

    The source marks it revoked when it gives the partition up: records of it
    still in flight then belong to the partition's next owner (which reads them
    again), even once the partition is assigned back.

    .. versionadded:: 0.2
    """

    __slots__ = ("revoked",)

    def __init__(self) -> None:
        self.revoked = False


@final
class SourceBatch:
    """Consecutive records of one source partition, as a source hands them over.

    ``start`` is the position of the first value and ``end`` the position to
    resume from once every value is done (the checkpoint stores ``end``).
    Positions are per-item ``start + i`` unless ``offsets`` lists them.

    ``errors`` maps the index of a value the source could not decode to its
    :class:`~riprap.DataError`; such a value is the payload as read (bytes).
    The runtime routes it like a record that failed in a step, before any
    step sees it: dead-lettered with the error's reason (or the run stops
    without a dead-letter store), so a bad record never blocks the rest of
    its partition (I7).

    ``assignment`` is the :class:`~riprap.lowlevel.Assignment` a group member read the records
    under (``None`` for sources whose partitions never move).

    ``nbytes`` is how many bytes the source read for these records (0 when it
    does not count them); the pipeline's ``max_in_flight_bytes`` bounds them.
    """

    __slots__ = (
        "assignment",
        "end",
        "errors",
        "headers",
        "keys",
        "nbytes",
        "offsets",
        "partition",
        "start",
        "timestamps",
        "values",
    )

    def __init__(
        self,
        partition: str,
        values: list[Any],
        *,
        start: int,
        end: int | None = None,
        offsets: list[int] | None = None,
        keys: list[Any] | None = None,
        headers: list[Headers] | None = None,
        timestamps: list[float | None] | None = None,
        errors: Mapping[int, DataError] | None = None,
        assignment: Assignment | None = None,
        nbytes: int = 0,
    ) -> None:
        self.partition = partition
        self.nbytes = nbytes
        self.assignment = assignment
        self.values = values
        self.start = start
        self.end = start + len(values) if end is None else end
        self.offsets = offsets
        self.keys = keys
        self.headers = headers
        self.timestamps = timestamps
        self.errors = errors

    def __len__(self) -> int:
        return len(self.values)

    def offset_of(self, index: int) -> int:
        """Source position of the value at ``index``."""
        return self.offsets[index] if self.offsets is not None else self.start + index

    def record(self, index: int, value: Any = _SOURCE_VALUE) -> Record:
        """The record at ``index``, optionally with a new (derived) value (``None`` included)."""
        return Record(
            self.values[index] if value is _SOURCE_VALUE else value,
            key=self.keys[index] if self.keys is not None else None,
            headers=self.headers[index] if self.headers is not None else (),
            timestamp=self.timestamps[index] if self.timestamps is not None else None,
            partition=self.partition,
            offset=self.offset_of(index),
        )


class Origin:
    """Maps a batch's item index back to ``(source batch, index)``; ``None`` if unknown."""

    __slots__ = ()

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        raise NotImplementedError

    def locate_all(self, count: int) -> list[Where]:
        """``locate(i)`` for the first ``count`` items, in one pass (sinks use it per batch)."""
        return [self.locate(i) for i in range(count)]


@final
class SourceOrigin(Origin):
    """Items are exactly the source batch's values, in order."""

    __slots__ = ("source",)

    def __init__(self, source: SourceBatch) -> None:
        self.source = source

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        return (self.source, index) if 0 <= index < len(self.source) else None

    def locate_all(self, count: int) -> list[Where]:
        source = self.source
        known = min(count, len(source))
        return [(source, i) for i in range(known)] + [None] * (count - known)


@final
class DropsOrigin(Origin):
    """Some parent items were removed; ``drops`` lists the output length at each removal."""

    __slots__ = ("drops", "parent")

    def __init__(self, parent: Origin | None, drops: list[int]) -> None:
        self.parent = parent
        self.drops = drops

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        if self.parent is None:
            return None
        return self.parent.locate(index + bisect_right(self.drops, index))

    def locate_all(self, count: int) -> list[Where]:
        if self.parent is None:
            return [None] * count
        drops = self.drops
        # The k-th drop removed parent item drops[k] + k.
        parents = self.parent.locate_all(count + bisect_right(drops, count - 1))
        kept: list[Where] = []
        start = 0
        for k, at in enumerate(drops):
            removed = at + k
            if removed >= len(parents):
                break
            kept.extend(parents[start:removed])
            start = removed + 1
        kept.extend(parents[start:])
        return kept[:count]


@final
class StartsOrigin(Origin):
    """Each parent item expanded to zero or more items; ``starts[i]`` is where item i's began."""

    __slots__ = ("parent", "starts")

    def __init__(self, parent: Origin | None, starts: list[int]) -> None:
        self.parent = parent
        self.starts = starts

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        if self.parent is None:
            return None
        return self.parent.locate(bisect_right(self.starts, index) - 1)

    def locate_all(self, count: int) -> list[Where]:
        if self.parent is None:
            return [None] * count
        starts = self.starts
        parents = self.parent.locate_all(len(starts))
        out: list[Where] = []
        for i, where in enumerate(parents):
            end = starts[i + 1] if i + 1 < len(starts) else count
            out.extend([where] * (end - starts[i]))
        return out[:count] + [None] * (count - len(out))


@final
class IndexOrigin(Origin):
    """Item ``j`` came from parent item ``indices[j]`` (reordered or partial outputs)."""

    __slots__ = ("indices", "parent")

    def __init__(self, parent: Origin | None, indices: list[int]) -> None:
        self.parent = parent
        self.indices = indices

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        if self.parent is None or not 0 <= index < len(self.indices):
            return None
        return self.parent.locate(self.indices[index])

    def locate_all(self, count: int) -> list[Where]:
        indices = self.indices[:count]
        if self.parent is None or not indices:
            return [None] * count
        parents = self.parent.locate_all(max(indices) + 1)
        return [parents[i] for i in indices] + [None] * (count - len(indices))


@final
class ConcatOrigin(Origin):
    """Items of several batches joined end to end (re-batching)."""

    __slots__ = ("bounds", "parts")

    def __init__(self, parts: list[tuple[int, Origin | None]]) -> None:
        self.parts = parts
        self.bounds = [start for start, _ in parts]

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        i = bisect_right(self.bounds, index) - 1
        if i < 0:
            return None
        start, origin = self.parts[i]
        return origin.locate(index - start) if origin is not None else None

    def locate_all(self, count: int) -> list[Where]:
        out: list[Where] = []
        for i, (start, origin) in enumerate(self.parts):
            if start >= count:
                break
            end = min(self.bounds[i + 1] if i + 1 < len(self.bounds) else count, count)
            n = end - start
            out.extend(origin.locate_all(n) if origin is not None else [None] * n)
        return out + [None] * (count - len(out))


@final
class Batch:
    """Values flowing between stages, the ack that covers them, and their origin."""

    __slots__ = ("ack", "items", "origin")

    def __init__(self, items: list[Any], ack: Ack, origin: Origin | None) -> None:
        self.items = items
        self.ack = ack
        self.origin = origin

    def __len__(self) -> int:
        return len(self.items)

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        """The source batch and index the item at ``index`` came from, if known."""
        return self.origin.locate(index) if self.origin is not None else None

    def record(self, index: int) -> Record:
        """The item at ``index`` as a :class:`Record` with its source metadata."""
        where = self.locate(index)
        if where is None:
            return Record(self.items[index])
        source, i = where
        return source.record(i, self.items[index])

    def sources(self) -> list[Where]:
        """Where every item came from: :meth:`locate` for all items, in one pass."""
        n = len(self.items)
        return self.origin.locate_all(n) if self.origin is not None else [None] * n

    def records(self) -> list[Record]:
        """Every item as a :class:`Record`."""
        return [
            Record(item) if where is None else where[0].record(where[1], item)
            for item, where in zip(self.items, self.sources(), strict=True)
        ]

    def position(self, index: int) -> tuple[str | None, int | None]:
        """``(partition, offset)`` of the source record behind the item at ``index``."""
        where = self.locate(index)
        if where is None:
            return None, None
        source, i = where
        return source.partition, source.offset_of(i)


def headers_dict(headers: Headers) -> Mapping[str, bytes]:
    """Headers as a mapping (the last value wins for repeated names)."""
    return dict(headers)
