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
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from ._acks import Ack

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


@final
class SourceBatch:
    """Consecutive records of one source partition, as a source hands them over.

    ``start`` is the position of the first value and ``end`` the position to
    resume from once every value is done (the checkpoint stores ``end``).
    Positions are per-item ``start + i`` unless ``offsets`` lists them.
    """

    __slots__ = ("end", "headers", "keys", "offsets", "partition", "start", "timestamps", "values")

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
    ) -> None:
        self.partition = partition
        self.values = values
        self.start = start
        self.end = start + len(values) if end is None else end
        self.offsets = offsets
        self.keys = keys
        self.headers = headers
        self.timestamps = timestamps

    def __len__(self) -> int:
        return len(self.values)

    def offset_of(self, index: int) -> int:
        """Source position of the value at ``index``."""
        return self.offsets[index] if self.offsets is not None else self.start + index

    def record(self, index: int, value: Any = None) -> Record:
        """The record at ``index``, optionally with a new (derived) value."""
        return Record(
            self.values[index] if value is None else value,
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


@final
class SourceOrigin(Origin):
    """Items are exactly the source batch's values, in order."""

    __slots__ = ("source",)

    def __init__(self, source: SourceBatch) -> None:
        self.source = source

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        return (self.source, index) if 0 <= index < len(self.source) else None


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

    def records(self) -> list[Record]:
        """Every item as a :class:`Record`."""
        return [self.record(i) for i in range(len(self.items))]

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
