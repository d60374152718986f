"""The Parquet sink: each source partition's records in Parquet files named by their positions.

Files are named by the positions of the first and last record they hold::

    <location>/<partition, percent-encoded>/<first offset:020d>-<last offset:020d>.parquet

so a replay after a crash lines up with the files already written: records a
stored file holds are skipped, and a file being filled is cut before the first
position of the next stored file.
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, final
from urllib.parse import quote

import anyio
import anyio.lowlevel
import anyio.to_thread
import pyarrow as pa
import pyarrow.parquet as pq

from riprap import ConfigError, SystemClock
from riprap.lowlevel import optional_limit, optional_seconds

from ._arrow import TableEncoder, check_schema
from ._batches import by_partition, describer, pick
from ._storage import LakeS3Options, Storage, open_storage

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from datetime import timedelta

    from riprap import Batch, Clock, SinkContext
    from riprap.lowlevel import Ack

    from ._storage import Writable

Compression = Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"]

_NAME = re.compile(r"(\d{20})-(\d{20})\.parquet")


@final
@dataclass(frozen=True, slots=True)
class ParquetSinkStatistics:
    """What a :class:`ParquetSink` has done since it was opened.

    Attributes:
        files_written: Files stored (a replay's rewrites count again).
        records_filling: Records in files not cut yet.
        records_skipped: Replayed records found already stored.
    """

    files_written: int
    records_filling: int
    records_skipped: int


@dataclass(slots=True)
class _File:
    """A file being filled (or cut and waiting to be stored): one partition's records."""

    partition: str
    first: int
    started: float
    last: int = -1
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    acks: list[Ack] = field(default_factory=list)


@dataclass(slots=True)
class _Partition:
    """One partition's stored file ranges (sorted by first position) and its file being filled."""

    name: str
    firsts: list[int]
    lasts: list[int]
    taken: int = -1
    filling: _File | None = None

    def stored(self, offset: int) -> bool:
        """Whether a stored file already holds ``offset``."""
        i = bisect.bisect_right(self.firsts, offset) - 1
        return i >= 0 and offset <= self.lasts[i]

    def overlaps(self, low: int, high: int) -> bool:
        """Whether a stored file holds a position from ``low`` to ``high``."""
        i = bisect.bisect_left(self.lasts, low)
        return i < len(self.firsts) and self.firsts[i] <= high

    def next_start(self, after: int) -> int | None:
        """The first position of the first stored file starting after ``after``."""
        i = bisect.bisect_right(self.firsts, after)
        return self.firsts[i] if i < len(self.firsts) else None


@final
class ParquetSink:
    """Writes each source partition's records as Parquet files, exactly once.

    **Schema.** Records are dicts. The Arrow ``schema`` is declared, or
    inferred from the first records (a column whose first values are all null
    is left out until declared: declare the schema when a field may be null at
    first). A record that does not fit (not a dict, a field not in the schema,
    a value of another kind than its column or out of its range, a null in a
    non-nullable column) is a :class:`~riprap.DataError`: it goes to the
    dead-letter store and the run goes on. A null field the schema lacks is
    ignored.

    **Files.** One file per partition is filled at a time, cut when it holds
    ``max_rows`` rows, ``max_age`` seconds after its first record arrived, on
    ``flush``, or earlier when the sink would otherwise hold more than
    ``max_in_flight - batch_size`` source records (the source must be able to
    read on). Without ``max_rows`` and ``max_age`` each write's records make
    their own file. Inside a file, row groups hold at most ``row_group_rows``
    rows and about ``row_group_bytes`` bytes (of Arrow data, before
    compression). Local files are written to a temp name, fsynced and renamed;
    S3 objects appear whole.

    **Exactly once.** A record is done (its position may be checkpointed) only
    once its file is stored. Files are named by the positions they hold, so
    before a partition's first record the sink lists the partition's stored
    files: replayed records that one holds are skipped, and a file being
    filled is cut before the next stored file's first position, so no two
    files ever hold the same position. This rests on the steps before the sink
    giving the same records for the same input, one writer per partition, and
    the items of one source record reaching the sink in one batch. A run from
    an empty checkpoint over a location that holds files skips the positions
    they hold: write a backfill to a new location.

    Args:
        location: A local directory or ``s3://bucket/prefix``.
        name: The step name of the sink.
        schema: The Arrow schema (``None``: inferred from the first records).
        compression: The Parquet codec.
        max_rows: Rows per file (``None``: no count limit).
        max_age: Seconds (or a ``timedelta``) from a file's first record to its
            cut at the latest (``None``: files wait for a count cut).
        row_group_rows: Rows per row group at most.
        row_group_bytes: Arrow bytes per row group, about (``None``: no limit).
        s3: How to reach S3 for an ``s3://`` location.
        clock: The clock ``max_age`` is measured on; in a pipeline it must be
            the pipeline's (the default).

    Raises:
        ConfigError: An option is invalid (named by the error).

    .. versionadded:: 0.1
    """

    idempotent = True
    """A replayed record is skipped if its file is stored, else written where it belongs."""

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        name: str = "parquet",
        schema: pa.Schema | None = None,
        compression: Compression = "zstd",
        max_rows: int | None = None,
        max_age: float | timedelta | None = None,
        row_group_rows: int = 100_000,
        row_group_bytes: int | None = 64 << 20,
        s3: LakeS3Options | None = None,
        clock: Clock | None = None,
    ) -> None:
        if compression not in ("zstd", "snappy", "gzip", "lz4", "brotli", "none"):
            raise ConfigError("compression", f"unknown codec {compression!r}")
        self.name = name
        self.location = location
        self.compression = compression
        self.max_rows = optional_limit("max_rows", max_rows)
        self.max_age = optional_seconds("max_age", max_age)
        self.row_group_rows = optional_limit("row_group_rows", row_group_rows) or 1
        self.row_group_bytes = optional_limit("row_group_bytes", row_group_bytes)
        self._storage: Storage = open_storage(location, s3)
        self._declared = check_schema("schema", schema)
        self._encoder = TableEncoder(self._declared, new_columns="refuse")
        self._given_clock = clock
        self._clock: Clock = clock or SystemClock()
        self._hold_limit: int | None = None
        self._holds = self.max_rows is not None or self.max_age is not None
        self._partitions: dict[str, _Partition] = {}
        self._ready: deque[_File] = deque()
        self._taken: Batch | None = None
        self._lock = anyio.Lock()
        self._written = self._skipped = 0

    def bind(self, context: SinkContext) -> None:
        """Take the pipeline's clock and in-flight bound (called by the runtime).

        Raises:
            ConfigError: ``clock`` is not the pipeline's.
        """
        if self._given_clock is not None and self._given_clock is not context.clock:
            raise ConfigError("clock", "must be the pipeline's clock, which wakes the sink")
        self._clock = context.clock
        self._hold_limit = max(1, context.max_in_flight - context.batch_size)

    def wake_at(self) -> float | None:
        """When a file being filled reaches ``max_age`` (on the clock), if ever."""
        if self.max_age is None:
            return None
        starts = [p.filling.started for p in self._partitions.values() if p.filling]
        return min(starts) + self.max_age if starts else None

    def statistics(self) -> ParquetSinkStatistics:
        """Counts since the sink was opened."""
        filling = sum(p.filling.rows for p in self._partitions.values() if p.filling)
        return ParquetSinkStatistics(self._written, filling, self._skipped)

    async def open(self) -> None:
        """Forget what an earlier run held (its records are replayed)."""
        async with self._lock:
            self._encoder = TableEncoder(self._declared, new_columns="refuse")
            self._partitions = {}
            self._ready.clear()
            self._taken = None
            self._written = self._skipped = 0

    async def write(self, batch: Batch) -> None:
        """Add the batch's records to their files; store the files that are cut.

        An empty batch stores the files whose ``max_age`` has passed. A retried
        call with the same batch (after a failed store) only stores.

        Raises:
            DataError: A record does not fit the schema; nothing of the batch is taken.
            RuntimeError: An item's source position is unknown, or a partition's
                records came out of order.
            OSError: The file system or S3 failed.
        """
        async with self._lock:
            if batch is not self._taken:
                await self._take(batch, self._clock.monotonic())
                self._taken = batch
            await self._store_ready()
            self._taken = None

    async def flush(self) -> None:
        """Cut every file being filled and store it."""
        async with self._lock:
            for partition in self._partitions.values():
                self._cut(partition)
            await self._store_ready()

    async def aclose(self) -> None:
        """Nothing to close; records not stored stay not done (they are replayed)."""
        await anyio.lowlevel.checkpoint()

    # -- taking records ------------------------------------------------------------

    async def _take(self, batch: Batch, now: float) -> None:
        """Encode the batch's new records, then add them to their partitions' files."""
        added: list[tuple[_Partition, Sequence[int], pa.Table]] = []
        skipped = 0
        for name, (offsets, indexes) in by_partition(batch, self.name).items():
            partition = await self._partition(name)
            if offsets[0] <= partition.taken:
                raise RuntimeError(
                    f"sink {self.name!r}: partition {name!r} went back from "
                    f"{partition.taken} to {offsets[0]}; its records must arrive in order"
                )
            if partition.overlaps(offsets[0], offsets[-1]):
                keep = [i for i, offset in enumerate(offsets) if not partition.stored(offset)]
                skipped += len(offsets) - len(keep)
                offsets, indexes = [offsets[i] for i in keep], [indexes[i] for i in keep]
            if not offsets:
                continue
            kept = offsets
            items = pick(batch.items, indexes)
            table = self._encoder.encode(items, describer(name, kept))
            added.append((partition, kept, table))
        self._skipped += skipped  # only once every record fits is the batch taken
        for partition, offsets, table in added:
            self._add(partition, offsets, table, batch.ack, now)
        self._cut_due(now)

    async def _partition(self, name: str) -> _Partition:
        """``name``'s state, listing its stored files on first use."""
        partition = self._partitions.get(name)
        if partition is None:
            names = await anyio.to_thread.run_sync(self._storage.names, quote(name, safe=""))
            ranges = sorted(
                (int(m[1]), int(m[2])) for m in map(_NAME.fullmatch, names) if m is not None
            )
            partition = _Partition(name, [a for a, _ in ranges], [b for _, b in ranges])
            self._partitions[name] = partition
        return partition

    def _add(
        self, partition: _Partition, offsets: Sequence[int], table: pa.Table, ack: Ack, now: float
    ) -> None:
        """Add rows to ``partition``'s files, cutting at ``max_rows`` and before stored files."""
        start, total = 0, len(offsets)
        while start < total:
            file = partition.filling
            if file is None:
                file = partition.filling = _File(partition.name, offsets[start], now)
            room = total - start
            if self.max_rows is not None:
                room = min(room, self.max_rows - file.rows)
            boundary = partition.next_start(file.first)
            if boundary is not None:
                room = min(room, bisect.bisect_left(offsets, boundary, start) - start)
            if room <= 0:
                self._cut(partition)
                continue
            file.tables.append(table.slice(start, room))
            file.rows += room
            file.last = offsets[start + room - 1]
            if not file.acks or file.acks[-1] is not ack:
                ack.retain()
                file.acks.append(ack)
            start += room
            if file.rows == self.max_rows:
                self._cut(partition)
        partition.taken = offsets[-1]

    def _cut_due(self, now: float) -> None:
        """Cut files past ``max_age``, all files without limits, and the oldest over the bound."""
        for partition in self._partitions.values():
            file = partition.filling
            if file is not None and (
                not self._holds or (self.max_age is not None and now >= file.started + self.max_age)
            ):
                self._cut(partition)
        limit = self._hold_limit
        while limit is not None and self.statistics().records_filling > limit:
            oldest = min(
                (p for p in self._partitions.values() if p.filling),
                key=lambda p: p.filling.started if p.filling else 0.0,
            )
            self._cut(oldest)

    def _cut(self, partition: _Partition) -> None:
        if partition.filling is not None and partition.filling.rows:
            self._ready.append(partition.filling)
        partition.filling = None

    # -- storing files -------------------------------------------------------------

    async def _store_ready(self) -> None:
        """Store every cut file in order; release its acks."""
        ready = self._ready
        while ready:
            file = ready[0]
            await anyio.to_thread.run_sync(self._store, file)
            ready.popleft()
            self._written += 1
            for ack in file.acks:
                ack.release()

    def _store(self, file: _File) -> None:
        """Encode ``file`` as Parquet and store it (blocking: runs in a worker thread)."""
        table = pa.concat_tables(file.tables, promote_options="default")
        rows = self.row_group_rows
        if self.row_group_bytes is not None and table.nbytes:
            rows = max(1, min(rows, self.row_group_bytes * table.num_rows // table.nbytes))
        name = f"{file.first:020d}-{file.last:020d}.parquet"

        def fill(out: Writable) -> None:
            pq.write_table(
                table,
                out,
                row_group_size=rows,
                compression=self.compression,
                write_page_checksum=True,  # readers (ParquetSource) verify every page
            )

        self._storage.write(quote(file.partition, safe=""), name, fill)
