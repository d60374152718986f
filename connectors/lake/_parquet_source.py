"""The Parquet source: the rows of Parquet files, one partition per file, resumable mid-file.

A file's position is the index of its next row. A row group's first row is
the sum of the rows of the groups before it (from the footer), so a restart
opens the file, finds the row group holding its position and reads on from
there: nothing before the position is decoded again.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
import anyio.to_thread
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from riprap import SourceBatch
from riprap.checkpoints import CheckpointError
from riprap.lowlevel import PartitionIdentities

from ._storage import LakeS3Options, Storage, open_storage

if TYPE_CHECKING:
    from riprap import SourceContext

log = logging.getLogger("riprap.connectors.lake")

FILE_COMPLETE = 1 << 62
"""The position that marks a file as quarantined (never read again)."""

_REASON = ".reason.json"


@final
@dataclass(frozen=True, slots=True)
class QuarantinedFile:
    """A Parquet file that could not be read; the rows after ``row`` were not handed on.

    Attributes:
        partition: The file's partition name (its location).
        reason: Why it was set aside (the reader's error).
        row: Rows before this one had been read (0: the file was unreadable from the start).
        copy: Where its copy is (``None`` without ``quarantine``).
        at: Wall-clock time of the quarantine, seconds since the epoch.

    .. versionadded:: 0.1
    """

    partition: str
    reason: str
    row: int
    copy: str | None
    at: float


@final
@dataclass(frozen=True, slots=True)
class ParquetSourceStatistics:
    """What a :class:`ParquetSource` has done since it was created.

    Attributes:
        files_read: Files opened and read (to their end or to their damage).
        files_skipped: Files a checkpoint marks as done.
        files_quarantined: Files set aside as corrupt.
    """

    files_read: int
    files_skipped: int
    files_quarantined: int


QuarantineHook = Callable[[QuarantinedFile], Awaitable[None] | None]


class _CorruptFile(Exception):
    """A file's footer or a row group cannot be decoded."""


def _corrupt(exc: Exception) -> bool:
    """Whether a reader's error says the file is damaged (rather than the store failing)."""
    if isinstance(exc, pa.ArrowInvalid):
        return True
    # Decoding errors (bad compressed data, a failed page checksum) are OSErrors without
    # an errno; S3 and file system failures carry an errno or an "AWS Error" message.
    return isinstance(exc, OSError) and exc.errno is None and "AWS Error" not in str(exc)


@final
class _FileReader:
    """Reads one file's rows from a position on, a row group at a time (blocking)."""

    def __init__(self, storage: Storage, relative: str, position: int, columns: list[str] | None):
        self.columns = columns
        self.next = position
        source = storage.open_input(relative)
        try:
            self.file = pq.ParquetFile(source, page_checksum_verification=True)
        except Exception as exc:
            if _corrupt(exc):
                raise _CorruptFile(str(exc)) from None
            raise
        metadata = self.file.metadata
        # The footer (read back whole: it is what tells one file from another, row
        # group offsets and statistics included) and the size: the file's identity.
        size, footer = source.size(), metadata.serialized_size
        digest = hashlib.blake2b(source.read_at(footer + 8, size - footer - 8), digest_size=8)
        self.identity = f"{size}:{digest.hexdigest()}"
        self.rows = metadata.num_rows
        self.starts: list[int] = []
        total = 0
        for group in range(metadata.num_row_groups):
            self.starts.append(total)
            total += metadata.row_group(group).num_rows
        self.group = -1
        self.table: pa.Table | None = None
        self.group_bytes = 0  # what the row group read holds in memory

    def read(self, max_records: int, max_bytes: int | None = None) -> tuple[list[Any], int]:
        """Up to ``max_records`` rows from ``next`` on, within one row group, and their bytes.

        A row weighs its row group's bytes in memory (as Arrow holds them) over
        its rows; with ``max_bytes`` the rows end with the one that reaches it.
        """
        group = self._group_of(self.next)
        if group != self.group or self.table is None:
            try:
                self.table = self.file.read_row_group(group, columns=self.columns)
            except Exception as exc:
                if _corrupt(exc):
                    raise _CorruptFile(f"row group {group}: {exc}") from None
                raise
            self.group = group
            self.group_bytes = self.table.nbytes
        table = self.table
        offset = self.next - self.starts[group]
        count, size = table.num_rows, self.group_bytes
        if max_bytes is not None and size:
            max_records = min(max_records, max(1, -(-max_bytes * count // size)))
        rows: list[Any] = table.slice(offset, max_records).to_pylist()
        self.next += len(rows)
        if not rows:
            return rows, 0
        return rows, size * (offset + len(rows)) // count - size * offset // count

    def _group_of(self, row: int) -> int:
        group = self.group if self.group >= 0 else 0
        while group + 1 < len(self.starts) and self.starts[group + 1] <= row:
            group += 1
        return group

    def close(self) -> None:
        self.file.close()


class RowFiles:
    """What the Parquet and Delta sources share: files read in order, resumed by row."""

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        name: str,
        columns: list[str] | None,
        quarantine: str | os.PathLike[str] | None,
        on_quarantine: QuarantineHook | None,
        s3: LakeS3Options | None,
    ) -> None:
        self.name = name
        self.location = os.fspath(location)
        self.columns = columns
        self.on_quarantine = on_quarantine
        self._storage = open_storage(location, s3)
        self._quarantine = None if quarantine is None else open_storage(quarantine, s3)
        self._s3 = self.location.startswith("s3://")
        self.quarantined: list[QuarantinedFile] = []
        """Every file quarantined since the source was created."""
        self._context: SourceContext | None = None
        self._positions: dict[str, int] = {}
        self._identities = PartitionIdentities()  # per file, its size and footer digest
        self._pending: deque[str] = deque()
        self._reader: _FileReader | None = None
        self._current = ""
        self._read = self._skipped = 0

    def list_files(self) -> list[str]:
        """The files to read, relative to the location, in order (blocking)."""
        raise NotImplementedError

    def partition_of(self, relative: str) -> str:
        """The partition name of the file at ``relative`` (its full location)."""
        return f"s3://{self._storage.path(relative)}" if self._s3 else self._storage.path(relative)

    def statistics(self) -> ParquetSourceStatistics:
        """Counts since the source was created."""
        return ParquetSourceStatistics(self._read, self._skipped, len(self.quarantined))

    def identities(self, positions: Mapping[str, int] | None = None) -> Mapping[str, str]:
        """Per file, its size and a digest of its footer when it was first read from its start.

        Saved with the positions: a later run refuses to resume a file that was
        written over under its name (a Parquet file is never appended to).
        """
        return self._identities.snapshot()

    async def open(self, context: SourceContext) -> None:
        """List the files; resume each from its checkpointed position."""
        self._context = context
        self._positions = dict(context.positions)
        self._identities = PartitionIdentities(context.identities)
        files = await anyio.to_thread.run_sync(self.list_files)
        self._pending = deque(files)

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next rows of the current file, or of the next file; ``None`` at the end."""
        while True:
            reader = self._reader
            if reader is None:
                if not self._pending:
                    await anyio.lowlevel.checkpoint()
                    return None
                completion = await self._open_file(self._pending.popleft())
                if completion is not None:
                    return completion
                continue
            partition, start = self.partition_of(self._current), reader.next
            if start >= reader.rows:
                await self._close_reader()
                continue
            limit = self._context.max_batch_bytes if self._context is not None else None
            try:
                rows, nbytes = await anyio.to_thread.run_sync(reader.read, max_records, limit)
            except _CorruptFile as exc:
                await self._close_reader()
                return await self._set_aside(self._current, str(exc), start)
            return SourceBatch(partition, rows, start=start, nbytes=nbytes)

    async def aclose(self) -> None:
        """Close the file being read."""
        await self._close_reader()

    async def _open_file(self, relative: str) -> SourceBatch | None:
        """Make ``relative`` the file being read, unless it is done (or quarantined now)."""
        position = self._positions.get(self.partition_of(relative), 0)
        if position >= FILE_COMPLETE:
            self._skipped += 1
            return None
        try:
            reader = await anyio.to_thread.run_sync(
                _FileReader, self._storage, relative, position, self.columns
            )
        except _CorruptFile as exc:
            return await self._set_aside(relative, str(exc), position)
        partition = self.partition_of(relative)
        known = self._identities.get(partition)
        if position > 0 and known is not None and known != reader.identity:
            await anyio.to_thread.run_sync(reader.close)
            raise CheckpointError(
                f"{partition}: the checkpoint resumes at row {position}, but the file is not "
                "the one it was counted in (its size or footer differ); was it written over? "
                "To read it from its start, set the partition's position to 0 "
                "(riprap checkpoint set)"
            )
        if position == 0 or known is None:
            self._identities.note(partition, reader.identity)
        if position >= reader.rows:
            self._skipped += 1
            await anyio.to_thread.run_sync(reader.close)
            return None
        self._read += 1
        self._reader, self._current = reader, relative
        return None

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await anyio.to_thread.run_sync(reader.close)

    async def _set_aside(self, relative: str, reason: str, row: int) -> SourceBatch:
        """Quarantine ``relative`` (copy and note it if asked; count, log and report it).

        Returns the empty batch that moves the file's position to ``FILE_COMPLETE``.
        """
        partition = self.partition_of(relative)
        copy = None
        if self._quarantine is not None:
            target = self._quarantine
            folder, _, name = relative.rpartition("/")
            note = {
                "source": partition,
                "reason": reason,
                "row": row,
                "quarantined_at": time.time(),
            }
            await anyio.to_thread.run_sync(self._storage.copy_to, relative, target, folder, name)
            await anyio.to_thread.run_sync(target.put, folder, name + _REASON, orjson.dumps(note))
            copy = target.path(relative)
        entry = QuarantinedFile(partition, reason, row, copy, time.time())
        self.quarantined.append(entry)
        if self._context is not None:
            self._context.count("files_quarantined", 1)
        log.warning("quarantined %s at row %d: %s (copy: %s)", partition, row, reason, copy)
        if self.on_quarantine is not None:
            result = self.on_quarantine(entry)
            if inspect.isawaitable(result):
                await result
        return SourceBatch(partition, [], start=row, end=FILE_COMPLETE)


@final
class ParquetSource(RowFiles):
    """Reads the rows of every Parquet file under a location, as dicts.

    **Files.** Every ``*.parquet`` file under ``location`` (a local directory
    or ``s3://bucket/prefix``, recursively) is one partition, named by its
    location; files are listed on open and read one after another in path
    order. Files added later are read by the next run.

    **Positions.** A record's offset is its row index in the file; a restart
    reopens the file, seeks to the row group holding its position (from the
    footer) and reads on from there. A file is held one row group at a time.
    The checkpoint also keeps each file's size and a digest of its footer
    (``identities()``): a file written over under its name stops the next
    run with a :class:`~riprap.checkpoints.CheckpointError` naming it,
    instead of being resumed at the old row count or skipped as read.

    **Quarantine.** A file whose footer or a row group cannot be decoded (not
    Parquet, truncated, a failed page checksum, corrupt compressed data) is
    quarantined, never skipped silently: the reason is logged, the file is
    added to ``quarantined``, counted in ``statistics()`` and in the run
    report and ``riprap_source_outcomes`` metric (``files_quarantined``),
    ``on_quarantine`` is called, and with ``quarantine`` the file is copied
    there next to ``<name>.reason.json``. Rows of the row groups before the
    damage have been handed on; the file's position then becomes
    ``FILE_COMPLETE`` and the run goes on with the next file. Errors of the
    store itself (a failing disk, S3) stop the run instead.

    Args:
        location: A local directory or ``s3://bucket/prefix``.
        name: The step name of the source.
        columns: Columns to read (``None``: all).
        quarantine: Where corrupt files are copied (a local directory or ``s3://``).
        on_quarantine: Called (sync or async) for every quarantined file.
        s3: How to reach S3 for ``s3://`` locations.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        name: str = "parquet",
        columns: list[str] | None = None,
        quarantine: str | os.PathLike[str] | None = None,
        on_quarantine: QuarantineHook | None = None,
        s3: LakeS3Options | None = None,
    ) -> None:
        super().__init__(
            location,
            name=name,
            columns=columns,
            quarantine=quarantine,
            on_quarantine=on_quarantine,
            s3=s3,
        )

    def list_files(self) -> list[str]:
        """Every ``*.parquet`` file under the location, in path order (blocking)."""
        return self._storage.files(".parquet")
