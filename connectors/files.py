"""Line-oriented files: JSON Lines and CSV sources and sinks.

Sources
    One partition per file, named by its path as given (or as the glob
    returned it); files are read in sorted order, one after another. A
    position counts the lines of a file consumed so far, 0-based, so a record's
    offset is the index of its (first) line and a batch's ``end``, which the
    checkpoint stores, is the next line to read. Empty lines are skipped but
    still counted. On open, a file skips the lines before its checkpointed
    position with ``islice`` (no decoding). File I/O runs in a worker thread,
    one hop per batch. Files are read as they are: the sources do not follow
    appends, so a last line without a newline is taken as a complete record
    because it ends the file; do not point a source at a file still being
    written.

Decode errors
    By default :class:`JsonLinesSource` hands over raw line bytes, and decoding
    belongs in a stage (:func:`parse_json_batch`): a :class:`~riprap.DecodeError`
    raised there is about one record and the engine routes it with the bytes
    as consumed. When a source decodes (``JsonLinesSource(decode=True)``, and
    :class:`CsvSource` always), a record that fails ends the batch just before
    it and the next ``read`` raises the ``DecodeError`` (``path:line: why``,
    line 1-based). The source never moves past that line: every later ``read``
    raises the same error, and no position beyond it can be checkpointed, so
    the record is never lost silently (I1, I7).

Sinks
    Append-only and at-least-once: ``write`` returns once the batch is written
    and ``os.fsync``-ed, but records replayed after a crash are appended again,
    so the sinks are not idempotent and a file may hold duplicates. A batch is
    all or nothing: a failed write is truncated away.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import IO, TYPE_CHECKING, Any, Literal, final

import anyio
import anyio.lowlevel
import orjson

from riprap import ConfigError, DataError, DecodeError, SourceBatch
from riprap.checkpoints import CheckpointError
from riprap.lowlevel import fsync_directory

if TYPE_CHECKING:
    from _csv import Reader as _CsvReader
    from collections.abc import Callable

    from riprap import Batch, SourceContext

__all__ = (
    "CsvSink",
    "CsvSource",
    "JsonLinesSink",
    "JsonLinesSource",
    "PathSpec",
    "encode_json_lines",
    "parse_json_batch",
    "parse_json_line",
)

PathSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
"""One path, one glob pattern, or a sequence of either."""


def parse_json_line(data: bytes | str, *, source: str = "", line: int | None = None) -> Any:
    """Parse one JSON line with orjson.

    Args:
        data: The line, without its line ending.
        source: Where it came from (a file path), for the error message.
        line: Its 1-based line number, for the error message.

    Raises:
        DecodeError: ``data`` is not valid JSON; the message reads ``source:line: why``.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(
            f"invalid JSON at column {exc.colno}: {exc.msg}", source=source, line=line
        ) from None


def parse_json_batch(batch: Batch) -> list[Any]:
    """Parse every item of a batch of raw JSON lines, for a decoding stage.

    The file and line of a bad item come from its record metadata (partition =
    path, offset = line index); the lookup happens only on failure.

    Raises:
        DecodeError: An item is not valid JSON; names its file and 1-based line.
    """
    loads = orjson.loads
    try:
        return [loads(item) for item in batch.items]
    except orjson.JSONDecodeError:
        pass
    values = []
    for index, item in enumerate(batch.items):
        try:
            values.append(loads(item))
        except orjson.JSONDecodeError:
            partition, offset = batch.position(index)
            line = None if offset is None else offset + 1
            parse_json_line(item, source=partition or "", line=line)
    return values


def encode_json_lines(
    batch: Batch, indexes: Iterable[int], error: Callable[[Batch, int, str], Exception]
) -> bytes:
    """The items at ``indexes`` as JSON Lines: bytes as they are, anything else via orjson.

    Raises:
        Exception: ``error(batch, index, why)`` for raw bytes holding a newline or
            a value orjson cannot serialise (sinks make it a ``DataError``).
    """
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    lines = []
    for index in indexes:
        item = batch.items[index]
        if isinstance(item, bytes | bytearray):
            if b"\n" in item:
                raise error(batch, index, "raw bytes contain a newline")
            lines.append(bytes(item) + b"\n")
            continue
        try:
            lines.append(dumps(item, option=newline))
        except orjson.JSONEncodeError as exc:
            raise error(batch, index, f"not JSON-serialisable: {exc}") from None
    return b"".join(lines)


def _resolve(spec: PathSpec) -> list[str]:
    """Expand globs, check that plain paths exist, and sort (blocking)."""
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    paths: set[str] = set()
    for item in items:
        path = os.fspath(item)
        if glob.has_magic(path):
            matches = glob.glob(path, recursive=True)
            if not matches:
                raise FileNotFoundError(errno.ENOENT, "no file matches the pattern", path)
            paths.update(matches)
        else:
            os.stat(path)  # raises FileNotFoundError naming the path
            paths.add(path)
    return sorted(paths)


def _consume(lines: Iterator[Any], count: int) -> int:
    """Skip up to ``count`` lines in C; return how many there were."""
    last = deque(enumerate(islice(lines, count), 1), maxlen=1)
    return last[0][0] if last else 0


class _FileSource:
    """What both sources share: paths, the current file, the worker-thread hop.

    A batch read by the worker thread is parked in ``_ready`` before the await
    returns, so a ``read`` cancelled mid-hop loses nothing: the next ``read``
    hands the same batch over.
    """

    def __init__(self, paths: PathSpec, *, name: str) -> None:
        self.name = name
        self._spec = paths
        self._paths: list[str] | None = None
        self._positions: Mapping[str, int] = {}
        self._index = 0
        self._path = ""
        self._error: DecodeError | None = None
        self._ready: SourceBatch | None = None
        self._lock = anyio.Lock()

    @property
    def paths(self) -> list[str]:
        """The files (partitions) in reading order, once opened."""
        if self._paths is None:
            raise RuntimeError(f"source {self.name!r} is not open")
        return list(self._paths)

    async def open(self, context: SourceContext) -> None:
        """Resolve the paths and remember where each file resumes.

        Raises:
            FileNotFoundError: A path does not exist or a pattern matches nothing.
        """
        async with self._lock:
            await anyio.to_thread.run_sync(self._close)
            self._paths = await anyio.to_thread.run_sync(_resolve, self._spec)
            self._positions = dict(context.positions)
            self._index = 0
            self._error = None
            self._ready = None

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next at most ``max_records`` records of the current file, or ``None`` at the end.

        Raises:
            DecodeError: The next record of the current file cannot be decoded.
        """
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        async with self._lock:
            if self._ready is None:
                await anyio.to_thread.run_sync(self._fill, max_records)
            else:
                await anyio.lowlevel.checkpoint()
            batch, self._ready = self._ready, None
            return batch

    async def aclose(self) -> None:
        """Close the current file."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._close)

    def _fill(self, max_records: int) -> None:
        """Park the next batch in ``_ready`` (worker thread); leave it ``None`` at the end."""
        if self._paths is None:
            raise RuntimeError(f"source {self.name!r} is not open")
        while self._index < len(self._paths):
            if self._error is not None:
                # A fresh traceback each time: re-raising one instance would grow it.
                raise self._error.with_traceback(None)
            if not self._is_open():
                self._path = self._paths[self._index]
                try:
                    self._open_file(self._positions.get(self._path, 0))
                except BaseException:
                    self._close()
                    raise
            self._ready = self._next_batch(max_records)
            if self._ready is None and self._error is None:
                self._close()
                self._index += 1
            elif self._ready is not None:
                return

    def _fail(self, message: str, line: int | None) -> None:
        """Remember a decode error; it is raised by this and every later read."""
        self._error = DecodeError(message, source=self._path, line=line, partition=self._path)

    def _batch(self, values: list[Any], offsets: list[int], end: int) -> SourceBatch | None:
        if not values:
            return None
        contiguous = offsets[-1] - offsets[0] + 1 == len(offsets)
        return SourceBatch(
            self._path,
            values,
            start=offsets[0],
            end=end,
            offsets=None if contiguous else offsets,
        )

    def _past_end(self, position: int, lines: int) -> CheckpointError:
        return CheckpointError(
            f"{self._path}: the checkpoint resumes at line {position}, but the file has "
            f"only {lines} lines; was it truncated or replaced?"
        )

    def _is_open(self) -> bool:
        raise NotImplementedError

    def _open_file(self, position: int) -> None:
        raise NotImplementedError

    def _next_batch(self, max_records: int) -> SourceBatch | None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


@final
class JsonLinesSource(_FileSource):
    """Reads JSON Lines files: raw line bytes by default, or parsed with orjson.

    Args:
        paths: A path, a glob pattern, or a sequence of either.
        name: The step name of the source.
        decode: Parse each line with orjson in the worker thread; a line that
            is not valid JSON stops the source there with a
            :class:`~riprap.DecodeError` (see the module docstring). ``"json"``
            is the same as ``True``.

    Values are the bytes of each line without its line ending (``\\n`` or
    ``\\r\\n``). A line that is empty once its ending is removed is skipped;
    a line of blanks is a record (and, decoded, a ``DecodeError``).

    .. versionadded:: 0.1
    """

    def __init__(
        self, paths: PathSpec, *, name: str = "jsonl", decode: bool | Literal["json"] = False
    ) -> None:
        if decode not in (False, True, "json"):
            raise ConfigError("decode", f"expected True, False or 'json', not {decode!r}")
        super().__init__(paths, name=name)
        self.decode = bool(decode)
        self._file: IO[bytes] | None = None
        self._line = 0

    def _is_open(self) -> bool:
        return self._file is not None

    def _open_file(self, position: int) -> None:
        self._file = open(self._path, "rb")  # noqa: SIM115 (closed by _close)
        self._line = _consume(self._file, position)
        if self._line < position:
            raise self._past_end(position, self._line)

    def _next_batch(self, max_records: int) -> SourceBatch | None:
        assert self._file is not None
        values: list[bytes] = []
        offsets: list[int] = []
        while len(values) < max_records:
            wanted = max_records - len(values)
            chunk = [line.rstrip(b"\r\n") for line in islice(self._file, wanted)]
            first = self._line
            self._line += len(chunk)
            if b"" in chunk:
                offsets.extend(first + i for i, line in enumerate(chunk) if line)
                values.extend(line for line in chunk if line)
            else:
                offsets.extend(range(first, self._line))
                values.extend(chunk)
            if len(chunk) < wanted:
                break
        if self.decode and values:
            return self._decoded(values, offsets)
        return self._batch(values, offsets, self._line)

    def _decoded(self, raw: list[bytes], offsets: list[int]) -> SourceBatch | None:
        loads = orjson.loads
        try:
            return self._batch([loads(line) for line in raw], offsets, self._line)
        except orjson.JSONDecodeError:
            pass
        values = []
        for line, offset in zip(raw, offsets, strict=True):
            try:
                values.append(loads(line))
            except orjson.JSONDecodeError as exc:
                self._fail(f"invalid JSON at column {exc.colno}: {exc.msg}", offset + 1)
                return self._batch(values, offsets[: len(values)], offset)
        raise AssertionError("unreachable: a line failed once and then parsed")

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@final
class CsvSource(_FileSource):
    """Reads CSV files with a header line into dicts (``csv.DictReader`` semantics).

    Positions count physical lines as the ``csv`` module reads them (text mode,
    ``newline=""``), 0-based: the header is line 0 and not a record, so the
    first row is at position 1 and a fresh file resumes from the line after
    the header. A row whose quoted fields span several lines has the offset of
    its first line and covers them all. Empty lines are skipped but counted.
    On resume the header is read again, then lines are skipped up to the
    checkpoint.

    A row whose field count differs from the header's (or that the ``csv``
    module rejects) is a :class:`~riprap.DecodeError` raised by ``read``, as
    described in the module docstring: DictReader would silently pad or spill
    such a row, which hides broken input.

    Args:
        paths: A path, a glob pattern, or a sequence of either.
        name: The step name of the source.
        delimiter: The field separator.
        encoding: The text encoding of the files.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        paths: PathSpec,
        *,
        name: str = "csv",
        delimiter: str = ",",
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(paths, name=name)
        self.delimiter = delimiter
        self.encoding = encoding
        self._file: IO[str] | None = None
        self._reader: _CsvReader | None = None
        self._header: list[str] = []
        self._base = 0  # lines consumed outside the reader (skipped on resume)

    def _is_open(self) -> bool:
        return self._file is not None

    def _lines_read(self) -> int:
        assert self._reader is not None
        return self._base + self._reader.line_num

    def _open_file(self, position: int) -> None:
        self._file = file = open(self._path, encoding=self.encoding, newline="")  # noqa: SIM115
        self._reader = reader = csv.reader(file, delimiter=self.delimiter)
        self._base = 0
        try:
            self._header = next(reader, [])
            skip = position - reader.line_num
            if skip > 0:
                # The reader pulls one line at a time from the file, so skipping
                # lines of the file underneath it is safe.
                self._base = _consume(file, skip)
                if self._base < skip:
                    raise self._past_end(position, self._lines_read())
        except UnicodeDecodeError as exc:
            raise self._undecodable(exc) from None

    def _undecodable(self, exc: UnicodeDecodeError) -> DecodeError:
        # The file is decoded in chunks, so the line is only approximately known.
        return DecodeError(
            f"not valid {self.encoding} text after line {self._lines_read()}: {exc.reason}",
            source=self._path,
            partition=self._path,
        )

    def _next_batch(self, max_records: int) -> SourceBatch | None:
        assert self._reader is not None
        header, width = self._header, len(self._header)
        values: list[dict[str, str]] = []
        offsets: list[int] = []
        while len(values) < max_records:
            offset = self._lines_read()
            try:
                row = next(self._reader, None)
            except csv.Error as exc:
                self._fail(f"malformed CSV: {exc}", offset + 1)
                return self._batch(values, offsets, offset)
            except UnicodeDecodeError as exc:
                self._error = self._undecodable(exc)
                return self._batch(values, offsets, offset)
            if row is None:
                break
            if not row:
                continue
            if len(row) != width:
                problem = f"expected {width} fields (the header's), got {len(row)}"
                self._fail(problem if width else "the first line is not a header", offset + 1)
                return self._batch(values, offsets, offset)
            values.append(dict(zip(header, row, strict=True)))
            offsets.append(offset)
        return self._batch(values, offsets, self._lines_read())

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._reader = None


class _AppendSink:
    """What both file sinks share: an append-only file, written and fsync-ed per batch."""

    _newline = b"\n"

    def __init__(self, path: str | os.PathLike[str], *, name: str) -> None:
        self.name = name
        self.path = os.fspath(path)
        self.idempotent = False
        self._fd: int | None = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        """Create or open the file for appending (in a worker thread)."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._open_sync)

    async def write(self, batch: Batch) -> None:
        """Append the batch and fsync it before returning.

        Raises:
            DataError: An item cannot be encoded; nothing of the batch is written.
            OSError: The write failed (it names the path); the file is left as
                it was before the batch.
        """
        async with self._lock:
            await anyio.to_thread.run_sync(self._write_sync, batch)

    async def flush(self) -> None:
        """Nothing is buffered: every ``write`` is already durable."""
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the file."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._close_sync)

    def _open_sync(self) -> None:
        if self._fd is not None:
            return
        created = not os.path.exists(self.path)
        self._check_existing(created)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            if created:
                fsync_directory(os.path.dirname(os.path.abspath(self.path)))
            elif size and not self._ends_with_newline():
                # A torn last line (a crash mid-write): end it, so the next record
                # starts on its own line instead of being glued to the fragment.
                self._append(fd, self._newline, size)
            prologue = self._prologue()
            if size == 0 and prologue:
                self._append(fd, prologue, 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _write_sync(self, batch: Batch) -> None:
        if self._fd is None:
            raise RuntimeError(f"sink {self.name!r} ({self.path}) is not open")
        payload = self._encode(batch)
        if payload:
            self._append(self._fd, payload, os.fstat(self._fd).st_size)

    def _append(self, fd: int, payload: bytes, size_before: int) -> None:
        """Write all of ``payload`` and fsync; on failure cut the file back."""
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size_before)
            except OSError as cleanup:
                exc.add_note(f"could not truncate the partial write: {cleanup}")
            raise _naming(exc, self.path) from None

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as file:
            file.seek(-1, os.SEEK_END)
            return file.read(1) == b"\n"

    def _close_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _record_error(self, batch: Batch, index: int, problem: str) -> DataError:
        partition, offset = batch.position(index)
        where = f"the record at {partition}@{offset}" if partition is not None else f"item {index}"
        return DataError(f"{self.path}: cannot write {where}: {problem}")

    def _check_existing(self, created: bool) -> None:
        """Validate an existing file before appending to it (blocking)."""

    def _prologue(self) -> bytes:
        """What a new (empty) file starts with."""
        return b""

    def _encode(self, batch: Batch) -> bytes:
        raise NotImplementedError


@final
class JsonLinesSink(_AppendSink):
    """Appends one JSON line per value; at-least-once, not idempotent.

    Values are serialised with orjson, except ``bytes``, which are written as
    they are (an already encoded line, e.g. from a raw :class:`JsonLinesSource`).

    Args:
        path: The file; created if missing.
        name: The step name of the sink.

    .. versionadded:: 0.1
    """

    def __init__(self, path: str | os.PathLike[str], *, name: str = "jsonl") -> None:
        super().__init__(path, name=name)

    def _encode(self, batch: Batch) -> bytes:
        return encode_json_lines(batch, range(len(batch.items)), self._record_error)


@final
class CsvSink(_AppendSink):
    """Appends one CSV row per dict value; at-least-once, not idempotent.

    A new file starts with the header line. Appending to an existing file
    requires its header to equal ``fieldnames``. Missing fields are written
    empty; a field not in ``fieldnames`` is a :class:`~riprap.DataError`.

    Args:
        path: The file; created if missing.
        fieldnames: The columns, in order.
        name: The step name of the sink.
        delimiter: The field separator.
        encoding: The text encoding.

    .. versionadded:: 0.1
    """

    _newline = b"\r\n"

    def __init__(
        self,
        path: str | os.PathLike[str],
        fieldnames: Iterable[str],
        *,
        name: str = "csv",
        delimiter: str = ",",
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(path, name=name)
        self.fieldnames = list(fieldnames)
        if not self.fieldnames:
            raise ConfigError("fieldnames", f"{self.path}: at least one column is required")
        self.delimiter = delimiter
        self.encoding = encoding

    def _writer(self, buffer: io.StringIO) -> csv.DictWriter[str]:
        return csv.DictWriter(
            buffer, self.fieldnames, delimiter=self.delimiter, extrasaction="raise"
        )

    def _check_existing(self, created: bool) -> None:
        if created or os.path.getsize(self.path) == 0:
            return
        with open(self.path, encoding=self.encoding, newline="") as file:
            header = next(csv.reader(file, delimiter=self.delimiter), [])
        if header != self.fieldnames:
            raise ConfigError(
                "fieldnames", f"{self.path} has the header {header}, not {self.fieldnames}"
            )

    def _prologue(self) -> bytes:
        buffer = io.StringIO()
        self._writer(buffer).writeheader()
        return buffer.getvalue().encode(self.encoding)

    def _encode(self, batch: Batch) -> bytes:
        buffer = io.StringIO()
        writer = self._writer(buffer)
        for index, item in enumerate(batch.items):
            if not isinstance(item, Mapping):
                raise self._record_error(
                    batch, index, f"expected a dict, got {type(item).__name__}"
                )
            try:
                writer.writerow(item)
            except ValueError as exc:
                raise self._record_error(batch, index, str(exc)) from None
        try:
            return buffer.getvalue().encode(self.encoding)
        except UnicodeEncodeError as exc:
            raise DataError(f"{self.path}: not encodable as {self.encoding}: {exc}") from None


def _naming(exc: OSError, path: str) -> OSError:
    """``exc`` with ``path`` as its filename, so the message names the file."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, path)
