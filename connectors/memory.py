"""In-memory source and sink, for tests, examples and benchmarks.

:class:`IterableSource` serves a list (or any iterable) as one partition whose
positions are the item indexes; :class:`MemorySink` collects what reaches it.
Neither does per-record Python work: a batch is one list slice (or one
``islice``), so the source adds next to nothing to a throughput measurement.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any, final

import anyio.lowlevel

from riprap import SourceBatch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from riprap import Batch, Record, SourceContext

__all__ = ("IterableSource", "ListSink", "MemorySink")


@final
class IterableSource:
    """Serves the values of an iterable as one partition; position = item index.

    A list is sliced per batch and read lazily, so appending to it before the
    source reaches the end is seen. Any other iterable is consumed once, with
    ``islice``; on resume the first ``positions[partition]`` items are skipped
    (a one-shot iterator cannot be re-opened after that).

    Args:
        name: The step name of the source.
        values: The values to serve, in order.
        partition: The name of the single partition.
        keys: Record keys: a sequence parallel to ``values`` (a list source
            only), or a function of the value.

    .. versionadded:: 0.1
    """

    __slots__ = ("_iterator", "_key_fn", "_keys", "_list", "_next", "name", "partition")

    def __init__(
        self,
        name: str,
        values: Iterable[Any],
        *,
        partition: str = "memory",
        keys: Sequence[Any] | Callable[[Any], Any] | None = None,
    ) -> None:
        self.name = name
        self.partition = partition
        self._list: list[Any] | None = values if isinstance(values, list) else None
        self._iterator: Iterator[Any] | None = None if self._list is not None else iter(values)
        if keys is not None and not callable(keys) and self._list is None:
            raise TypeError(f"source {name!r}: a key sequence needs a list of values")
        self._keys = None if keys is None or callable(keys) else keys
        self._key_fn = keys if callable(keys) else None
        self._next = 0

    async def open(self, context: SourceContext) -> None:
        """Start at the checkpointed position of the partition (0 if none).

        Raises:
            RuntimeError: A one-shot iterator would have to go back to an
                earlier position.
        """
        start = context.positions.get(self.partition, 0)
        if self._iterator is not None:
            if start < self._next:
                raise RuntimeError(
                    f"source {self.name!r}: cannot rewind a one-shot iterator "
                    f"from {self._next} to {start}"
                )
            # Consume and discard in C (the itertools "consume" recipe).
            skip = start - self._next
            next(islice(self._iterator, skip, skip), None)
        self._next = start
        await anyio.lowlevel.checkpoint()

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next at most ``max_records`` values, or ``None`` at the end."""
        await anyio.lowlevel.checkpoint()
        start = self._next
        if self._list is not None:
            values = self._list[start : start + max_records]
        else:
            assert self._iterator is not None
            values = list(islice(self._iterator, max_records))
        if not values:
            return None
        self._next = start + len(values)
        return SourceBatch(self.partition, values, start=start, keys=self._keys_for(start, values))

    def _keys_for(self, start: int, values: list[Any]) -> list[Any] | None:
        if self._key_fn is not None:
            return list(map(self._key_fn, values))
        if self._keys is not None:
            return list(self._keys[start : start + len(values)])
        return None

    async def aclose(self) -> None:
        """Nothing to release; a checkpoint for symmetry with real sources."""
        await anyio.lowlevel.checkpoint()


@final
class MemorySink:
    """Collects every value written to it in ``values`` (and records, on request).

    Being in memory, a write is "durable" for the life of the process only;
    replayed records are appended again, so the sink is not idempotent.

    Args:
        name: The step name of the sink.
        keep_records: Also keep each item as a :class:`~riprap.Record` (with
            its source partition and offset) in ``records``.

    .. versionadded:: 0.1
    """

    __slots__ = ("idempotent", "keep_records", "name", "records", "values")

    def __init__(self, name: str = "memory", *, keep_records: bool = False) -> None:
        self.name = name
        self.idempotent = False
        self.keep_records = keep_records
        self.values: list[Any] = []
        self.records: list[Record] = []

    async def open(self) -> None:
        """Nothing to open."""
        await anyio.lowlevel.checkpoint()

    async def write(self, batch: Batch) -> None:
        """Append the batch's values (and records)."""
        await anyio.lowlevel.checkpoint()
        self.values.extend(batch.items)
        if self.keep_records:
            self.records.extend(batch.records())

    async def flush(self) -> None:
        """Nothing is buffered."""
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Nothing to close; the collected values stay readable."""
        await anyio.lowlevel.checkpoint()


ListSink = MemorySink
"""Alias of :class:`MemorySink`, under the name other stream engines use for it."""
