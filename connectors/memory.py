"""In-memory source and sink, for tests, examples and benchmarks.

:class:`IterableSource` serves a list (or any iterable) as one partition whose
positions are the item indexes; :class:`MemorySink` collects what reaches it.
Neither does per-record Python work: a batch is one list slice (or one
``islice``), so the source adds next to nothing to a throughput measurement.
Under ``riprap run --workers N`` a list source is split by position: worker
``i`` reads every N-th item from item ``i`` (:meth:`IterableSource.for_worker`).
"""

from __future__ import annotations

import asyncio
from itertools import islice
from typing import TYPE_CHECKING, Any, final

import anyio.lowlevel

from riprap import ConfigError, SourceBatch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from riprap import Batch, Record, SourceContext

__all__ = ("YIELD_EVERY", "IterableSource", "ListSink", "MemorySink")

YIELD_EVERY = 1_000
"""Records an :class:`IterableSource` reads between two turns it gives the event loop."""


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

    __slots__ = (
        "_count",
        "_index",
        "_iterator",
        "_key_fn",
        "_keys",
        "_list",
        "_next",
        "_unyielded",
        "name",
        "partition",
    )

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
        self._unyielded = 0  # records read since the last turn given to the event loop
        self._index, self._count = 0, 1  # this worker reads items index, index + count, ...

    def for_worker(self, index: int, count: int) -> IterableSource:
        """This source for worker ``index`` of ``count``: items ``index``, ``index + count``, ...

        Positions stay the items' indexes in the whole list, so the workers'
        records and positions never overlap.

        Raises:
            ConfigError: The values are not a list (a one-shot iterator cannot
                be shared), or ``index`` is not in ``range(count)``.
        """
        if self._list is None:
            raise ConfigError(
                "workers", f"source {self.name!r} serves a one-shot iterator; split needs a list"
            )
        if not 0 <= index < count:
            raise ConfigError(
                "workers", f"source {self.name!r}: worker {index} is not in 0..{count - 1}"
            )
        keys = self._key_fn if self._key_fn is not None else self._keys
        clone = IterableSource(self.name, self._list, partition=self.partition, keys=keys)
        clone._index, clone._count = index, count
        return clone

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
        """The next at most ``max_records`` values, or ``None`` at the end.

        It gives the event loop a turn (a checkpoint: cancellation lands
        there) once per :data:`YIELD_EVERY` records: the values are at hand,
        and a turn per small batch would pace the whole pipeline at one batch
        per turn.
        """
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            # The turn itself, as anyio's checkpoint gives it on asyncio, without
            # its look-up of the running backend (a few µs a batch on a hot path).
            await asyncio.sleep(0)
        self._unyielded += max_records
        if self._count > 1:
            return self._read_share(max_records)
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

    def _read_share(self, max_records: int) -> SourceBatch | None:
        """This worker's next items: every ``_count``-th, from its first one at ``_next`` on."""
        assert self._list is not None
        step = self._count
        first = self._next + (self._index - self._next) % step
        values = self._list[first : first + max_records * step : step]
        if not values:
            return None
        offsets = list(range(first, first + len(values) * step, step))
        self._next = offsets[-1] + 1
        if self._key_fn is not None:
            keys: list[Any] | None = list(map(self._key_fn, values))
        else:
            keys = None if self._keys is None else list(self._keys[first : self._next : step])
        return SourceBatch(
            self.partition, values, start=first, end=self._next, offsets=offsets, keys=keys
        )

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
