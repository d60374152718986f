"""Line-oriented files: JSON Lines and CSV sources and sinks.

Sources
    One partition per file, named by its path as given (or as the glob
    returned it; a name that is not valid UTF-8 has its bad bytes written as
    ``\\xNN`` escapes); files are read in sorted order, one after another. A line
    ends at LF, CRLF or a lone CR (old Mac files are not one giant record),
    and a UTF-8 byte order mark at the start of a file is skipped. A position
    counts the lines of a file consumed so far, 0-based, so a record's offset
    is the index of its (first) line and a batch's ``end``, which the
    checkpoint stores, is the next line to read. Empty lines are skipped but
    still counted. On open, a file skips the lines before its checkpointed
    position (no decoding), once the digest of its first 4 KiB (saved with
    the positions, see ``identities``) shows it is the file that position was
    counted in: a file replaced under its name stops the run with a
    :class:`~riprap.checkpoints.CheckpointError` instead (appending keeps the
    head). File I/O runs in a worker thread, one hop per batch. Files are read
    as they are: the sources do not follow appends within a run, and a file
    that grows between runs resumes. A last line without a line break is read
    as a complete record because it ends the file, and its length is saved
    with the position: if the next run finds it longer, it was still being
    written and the record read was cut, so that run stops with a
    :class:`~riprap.checkpoints.CheckpointError` naming the line instead of
    going on after it. ``unterminated_last_line="wait"`` leaves such a line
    for a later run instead (a file another program appends to). A line
    is held up to ``max_line_bytes`` (16 MiB by default) and no further: a
    longer one is a record of its first 1,024 bytes with a
    :class:`~riprap.DecodeError` (reason ``line_too_long``). Under
    ``riprap run --workers N`` each worker reads the files whose path hashes
    to it (``for_worker``).

Decode errors
    By default :class:`JsonLinesSource` hands over raw line bytes, and decoding
    belongs in a stage (:func:`parse_json_batch`): a :class:`~riprap.DecodeError`
    raised there is about one record and the engine routes it with the bytes
    as consumed. When a source decodes (``JsonLinesSource(decode=True)``, and
    :class:`CsvSource` always), a record that fails is handed over as its raw
    bytes with its ``DecodeError`` (``path:line: why``, line 1-based) in the
    batch's ``errors``: the engine dead-letters it like a record that failed in
    a step (or stops the run, naming the file and line, when there is no
    dead-letter store), and the rest of the file goes on (I7).

Numbers
    JSON is decoded and encoded losslessly (see :mod:`riprap.connectors.json_codec`):
    an integer beyond 64 bits stays exact, and a NaN or an infinity is a
    :class:`~riprap.DataError` (reason ``non_finite_number``), never ``null``.

Sinks
    Append-only and at-least-once: ``write`` returns once the batch is written
    and ``os.fsync``-ed, but records replayed after a crash are appended again,
    so the sinks are not idempotent and a file may hold duplicates. A batch is
    all or nothing: a failed write is truncated away. A missing parent
    directory is created on open, as the checkpoint and dead-letter stores do.
"""

from __future__ import annotations

import codecs
import csv
import errno
import glob
import hashlib
import io
import logging
import os
import stat
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from copy import copy
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Self, cast, final

import anyio
import anyio.lowlevel

from riprap import ConfigError, DataError, DecodeError, SourceBatch
from riprap.checkpoints import CheckpointError
from riprap.connectors.json_codec import encode_json as encode_json
from riprap.connectors.json_codec import encode_json_lines as encode_json_lines
from riprap.connectors.json_codec import parse_json_batch as parse_json_batch
from riprap.connectors.json_codec import parse_json_column
from riprap.connectors.json_codec import parse_json_line as parse_json_line
from riprap.lowlevel import PartitionIdentities, fsync_directory, make_directory

if TYPE_CHECKING:
    from _csv import Reader as _CsvReader

    from riprap import Batch, SourceContext

__all__ = (
    "DEFAULT_MAX_LINE_BYTES",
    "CsvSink",
    "CsvSource",
    "JsonLinesSink",
    "JsonLinesSource",
    "PathSpec",
    "encode_json",
    "encode_json_lines",
    "parse_json_batch",
    "parse_json_line",
)

PathSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
"""One path, one glob pattern, or a sequence of either."""

_BOM = codecs.BOM_UTF8
_CHUNK = 1 << 16
_BLOCK = 1 << 18  # JSON Lines are split a block at a time: fewer, longer runs

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest line the file sources read by default (16 MiB)."""
_KEPT = 1024
"""Bytes of an over-long line handed over as its record (and the least ``max_line_bytes``)."""
_HEAD = 4096
"""Bytes at the start of a file whose digest tells it from another under its name."""

_log = logging.getLogger("riprap.connectors.files")


@final
class _Overlong:
    """Stands for a line over the limit among the lines of a block: its first bytes and length."""

    __slots__ = ("kept", "length")

    def __init__(self, kept: bytes, length: int) -> None:
        self.kept = kept
        self.length = length

    def __len__(self) -> int:
        """The bytes held of the line (what it weighs in a batch)."""
        return len(self.kept)


@final
class _Tail:
    """What a line reader found at the end of its file: a last line without a line break.

    ``length`` is its bytes (0: the file ends with a line break); with ``hold``
    such a line is not handed over (it may still be being written).
    """

    __slots__ = ("hold", "length")

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.length = 0


def _prefix_of(piece: list[bytes | _Overlong], room: int) -> int:
    """How many lines of ``piece`` first hold ``room`` bytes or more (all of them if never)."""
    held = 0
    for k, line in enumerate(piece, 1):
        held += len(line)
        if held >= room:
            return k
    return len(piece)


# -- lines --------------------------------------------------------------------------


def _lines(file: IO[bytes], limit: int, tail: _Tail) -> Iterator[bytes | _Overlong]:
    """The lines of a binary file, each ending at LF, CRLF or a lone CR (endings kept).

    A line longer than ``limit`` bytes (its ending aside) is held only up to
    the limit and comes as an :class:`_Overlong`. A last line without a line
    break is noted in ``tail`` (and held back if it says so).
    """
    read = file.read
    size = min(_CHUNK, limit)
    parts: list[bytes] = []  # the unfinished line so far, up to the limit
    held = 0  # the unfinished line's length
    while chunk := read(size):
        chunk = _whole_crlf(chunk, read)  # a CRLF is never cut between two chunks
        if parts:
            chunk, parts, held, overlong = _continued(chunk, parts, held, limit, keepends=True)
            if overlong is not None:
                yield overlong
            if not chunk:
                continue
        lines = chunk.splitlines(keepends=True)
        if not lines[-1].endswith((b"\n", b"\r")):
            unfinished = lines.pop()
            parts, held = [unfinished], len(unfinished)
        yield from lines
    tail.length = held
    if tail.hold:
        return
    if held > limit:
        yield _Overlong(b"".join(parts)[:_KEPT], held)
    elif parts:
        yield b"".join(parts)


def _continued(
    chunk: bytes, parts: list[bytes], held: int, limit: int, *, keepends: bool = False
) -> tuple[bytes, list[bytes], int, _Overlong | None]:
    """An unfinished line of ``held`` bytes (``parts``) continued by ``chunk``.

    Returns what of ``chunk`` is left to split into lines (empty while the
    line goes on; with the line in front once it ends under the limit), the
    unfinished line's parts and length, and the line as an :class:`_Overlong`
    once it ended over the limit. Over the limit, only its first bytes are
    kept (and its line ending, with ``keepends``).
    """
    end = _line_break(chunk)
    before, held = held, held + (len(chunk) if end < 0 else end)
    if held <= limit:
        parts.append(chunk)
        if end < 0:
            return b"", parts, held, None  # no line break in the whole chunk
        return b"".join(parts), [], 0, None
    if before < _KEPT:
        parts.append(chunk[: _KEPT - before])  # what of it is handed over
    if end < 0:
        return b"", parts, held, None
    after = end + (2 if chunk.startswith(b"\r\n", end) else 1)
    kept = b"".join(parts)[:_KEPT] + (chunk[end:after] if keepends else b"")
    return chunk[after:], [], 0, _Overlong(kept, held)


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


def _fingerprint(head: bytes) -> str:
    """``head``'s length and a 64-bit digest (``"4096:9f86d081884c7d65"``): short, since the
    checkpoint holds one per file, and enough to tell a file from its replacement."""
    return f"{len(head)}:{hashlib.blake2b(head, digest_size=8).hexdigest()}"


def _split_tails(
    saved: Mapping[str, str], positions: Mapping[str, int]
) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """Saved identities as heads' digests and, where one is noted (``"<head>+<bytes>"``), the
    bytes of a last line read without a line break, at the position saved after it."""
    heads: dict[str, str] = {}
    tails: dict[str, tuple[int, int]] = {}
    for name, identity in saved.items():
        head, plus, length = identity.partition("+")
        heads[name] = head
        if plus and length.isdigit() and positions.get(name, 0) > 0:
            tails[name] = (positions[name], int(length))
    return heads, tails


def _partition_name(path: str) -> str:
    """The partition name of the file at ``path``: the path, as text any store can hold.

    A file name that is not valid UTF-8 comes from the OS with its bad bytes
    as lone surrogates, which no JSON, SQLite or metrics text can hold; they
    are written as ``\\xNN`` escapes instead (``café`` in Latin-1 is
    ``caf\\xe9``), the same on every run.
    """
    try:
        path.encode()
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def _worker_of(path: str, count: int) -> int:
    """The worker a file belongs to: a stable hash of its path, the same in every process."""
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % count if count > 1 else 0


def _check_share(name: str, index: int, count: int) -> None:
    """Refuse a worker index outside ``range(count)`` or a count below 1."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError("workers", f"source {name!r}: worker count {count!r} is not >= 1")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ConfigError("workers", f"source {name!r}: worker {index!r} is not in 0..{count - 1}")


def _consume(lines: Iterator[Any], count: int) -> int:
    """Skip up to ``count`` lines in C; return how many there were."""
    last = deque(enumerate(islice(lines, count), 1), maxlen=1)
    return last[0][0] if last else 0


@final
class _LineBlocks:
    """A binary file's lines without their endings, taken in runs (for JSON Lines).

    The same lines as :func:`_lines` with ``rstrip(b"\\r\\n")`` applied, but
    split a block at a time by ``bytes.splitlines`` (which breaks at LF, CRLF
    and a lone CR, as ``_lines`` does): no Python step per line.

    A line longer than ``limit`` is one :class:`_Overlong` in place of its
    bytes (alone in its block, so only a new block is checked for one), and
    ``overlong`` counts those taken: the reader looks for them only when it
    moved.
    """

    __slots__ = ("_at", "_block", "_blocks", "capped", "overlong", "taken_bytes")

    def __init__(self, file: IO[bytes], limit: int, tail: _Tail) -> None:
        self._blocks = _blocks(file, limit, tail)
        self._block: list[bytes | _Overlong] = []
        self._at = 0
        self.overlong = 0
        self.taken_bytes = 0  # the bytes of the lines the last take() returned
        self.capped = False  # whether the last take() stopped at its byte limit

    def _next_block(self) -> bool:
        """Move to the next block; ``False`` at the end of the file."""
        self._block, self._at = next(self._blocks, []), 0
        if not self._block:
            return False
        if type(self._block[0]) is _Overlong:
            self.overlong += 1
        return True

    def take(self, count: int, max_bytes: int | None = None) -> list[bytes | _Overlong]:
        """The next up to ``count`` lines; fewer only at the end of the file or, with
        ``max_bytes``, once they hold that many bytes (``capped``; at least one line).
        """
        taken: list[bytes | _Overlong] = []
        held = 0
        self.capped = False
        while len(taken) < count:
            if self._at >= len(self._block) and not self._next_block():
                break
            at = self._at
            piece = self._block[at : at + count - len(taken)]
            if max_bytes is not None:
                size = sum(map(len, piece))
                if held + size >= max_bytes:
                    piece = piece[: _prefix_of(piece, max_bytes - held)]
                    size = sum(map(len, piece))
                    self.capped = True
                held += size
            self._at = at + len(piece)
            if taken:
                taken += piece
            else:
                taken = piece
            if self.capped:
                break
        self.taken_bytes = held
        return taken

    def skip(self, count: int) -> int:
        """Skip up to ``count`` lines; return how many there were."""
        skipped = 0
        while skipped < count:
            if self._at >= len(self._block) and not self._next_block():
                break
            step = min(count - skipped, len(self._block) - self._at)
            self._at += step
            skipped += step
        return skipped


def _blocks(file: IO[bytes], limit: int, tail: _Tail) -> Iterator[list[bytes | _Overlong]]:
    """Runs of a binary file's lines without their endings (never an empty run).

    A line longer than ``limit`` bytes is held only up to the limit and comes
    as an :class:`_Overlong`, alone in its run. A block is never longer than
    ``limit``, so only a line that spans blocks can be. A last line without a
    line break comes alone in the last run, noted in ``tail`` first (and held
    back if it says so).
    """
    read = file.read
    size = min(_BLOCK, limit)
    parts: list[bytes] = []  # the unfinished line so far, up to the limit
    held = 0  # the unfinished line's length
    while chunk := read(size):
        chunk = _whole_crlf(chunk, read)  # a CRLF is never cut between two blocks
        if parts:
            chunk, parts, held, overlong = _continued(chunk, parts, held, limit)
            if overlong is not None:
                yield [overlong]
            if not chunk:
                continue
        lines = chunk.splitlines()
        if not chunk.endswith((b"\n", b"\r")):
            unfinished = lines.pop()
            parts, held = [unfinished], len(unfinished)
        if lines:
            yield cast("list[bytes | _Overlong]", lines)
    tail.length = held
    if tail.hold:
        return
    if held > limit:
        yield [_Overlong(b"".join(parts)[:_KEPT], held)]
    elif parts:
        yield [b"".join(parts)]


def _whole_crlf(chunk: bytes, read: Callable[[int], bytes]) -> bytes:
    """``chunk``, with the next bytes read while it ends in CR (a CR, CR, LF run included)."""
    while chunk.endswith(b"\r") and (more := read(1)):
        chunk += more
    return chunk


def _line_break(chunk: bytes) -> int:
    """The index of the first LF or CR in ``chunk``, or -1."""
    lf, cr = chunk.find(b"\n"), chunk.find(b"\r")
    return lf if cr < 0 else cr if lf < 0 else min(lf, cr)


# -- sources ------------------------------------------------------------------------


class _FileSource:
    """What both sources share: paths, the current file, the worker-thread hop.

    A batch read by the worker thread is parked in ``_ready`` before the await
    returns, so a ``read`` cancelled mid-hop loses nothing: the next ``read``
    hands the same batch over.
    """

    def __init__(
        self, paths: PathSpec, *, name: str, unterminated_last_line: Literal["read", "wait"]
    ) -> None:
        if unterminated_last_line not in ("read", "wait"):
            raise ConfigError(
                "unterminated_last_line",
                f"expected 'read' or 'wait', not {unterminated_last_line!r}",
            )
        self.unterminated_last_line = unterminated_last_line
        self.name = name
        self._spec = paths
        self._paths: list[str] | None = None
        self._positions: Mapping[str, int] = {}
        self._index = 0
        self._path = ""
        self._name = ""  # the file's partition name (see _partition_name)
        self._ready: SourceBatch | None = None
        self._lock = anyio.Lock()
        self._share = (0, 1)  # (worker index, worker count): every file by default
        self._max_batch_bytes: int | None = None  # the pipeline's (SourceContext)
        self._heads = PartitionIdentities()  # per file, the digest of its head
        self._tail = _Tail()  # the current file's last line, if it has no line break
        # Per file whose last line was read without a line break: the position after
        # it and its bytes (saved beside the head's digest while the position is there).
        self._tails: dict[str, tuple[int, int]] = {}

    whole_partitions = True
    """A worker's share is whole files (partitions), each always its own: keyed state splits too."""

    def for_worker(self, index: int, count: int) -> Self:
        """This source for worker ``index`` of ``count``: the files whose path hashes to it.

        A file belongs to worker ``zlib.crc32(path) % count`` (the path as
        resolved, UTF-8): stable across runs and machines, and a file added
        later does not move the others, so each worker's positions stay its own.

        Raises:
            ConfigError: ``index`` is not in ``range(count)``, or the source is open.
        """
        _check_share(self.name, index, count)
        if self._paths is not None:
            raise ConfigError("workers", f"source {self.name!r} is open; split it before the run")
        clone = copy(self)
        clone._share = (index, count)
        clone._lock = anyio.Lock()
        return clone

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
            paths = await anyio.to_thread.run_sync(_resolve, self._spec)
            index, count = self._share
            self._paths = [p for p in paths if _worker_of(p, count) == index]
            self._positions = dict(context.positions)
            heads, self._tails = _split_tails(context.identities, self._positions)
            self._heads = PartitionIdentities(heads)
            self._max_batch_bytes = context.max_batch_bytes
            self._index = 0
            self._ready = None

    def identities(self, positions: Mapping[str, int] | None = None) -> Mapping[str, str]:
        """Per file, a digest of its first 4 KiB (at most) when it was first read from its start,
        and the bytes of its last line when that was read without a line break.

        Saved with the positions: a later run refuses to resume a file whose
        head differs (it was replaced under its name), where counting its lines
        on would skip the new file's first ones (appending keeps the head), or
        whose last line read then has grown since: it was still being written,
        and the record read from it was cut.
        """
        heads = self._heads.snapshot()
        at = {} if positions is None else positions
        tails = [
            (name, length)
            for name, (end, length) in list(self._tails.items())  # noted in a worker thread
            if at.get(name) == end and name in heads
        ]
        if not tails:
            return heads
        return {**heads, **{name: f"{heads[name]}+{length}" for name, length in tails}}

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next at most ``max_records`` records of the current file, or ``None`` at the end.

        Records that cannot be decoded come as their raw bytes, with their
        :class:`~riprap.DecodeError` in the batch's ``errors``.

        Raises:
            CheckpointError: A file is shorter than its checkpointed position,
                or it is not the file that position was counted in.
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
            if not self._is_open():
                self._path = self._paths[self._index]
                self._name = _partition_name(self._path)
                position = self._positions.get(self._name, 0)
                try:
                    self._check_head(position)
                    self._tail = _Tail(hold=self.unterminated_last_line == "wait")
                    self._open_file(position)
                except BaseException:
                    self._close()
                    raise
            self._ready = self._next_batch(max_records)
            tail = self._tail
            if self._ready is not None:
                if tail.length and not tail.hold and self._taken_to_end():  # ends with that line
                    self._tails[self._name] = (self._ready.end, tail.length)
                return
            if tail.length and tail.hold:
                _log.warning(
                    "%s: its last line (%d bytes) has no line break yet; it is left for "
                    "the next run (unterminated_last_line='wait')",
                    self._name,
                    tail.length,
                    extra={"source": self.name, "partition": self._name},
                )
            self._close()
            self._index += 1

    def _undecodable(self, problem: str, line: int) -> DecodeError:
        return DecodeError(problem, source=self._name, line=line, partition=self._name)

    def _batch(
        self,
        values: list[Any],
        offsets: Sequence[int],
        end: int,
        errors: Mapping[int, DataError] | None = None,
    ) -> SourceBatch | None:
        if not values:
            return None
        contiguous = offsets[-1] - offsets[0] + 1 == len(offsets)
        return SourceBatch(
            self._name,
            values,
            start=offsets[0],
            end=end,
            offsets=None if contiguous else list(offsets),
            errors=errors or None,
        )

    def _check_head(self, position: int) -> None:
        """Refuse to resume in a file whose head is not the one noted; note a new one's.

        Only a regular file has a head to read twice: a named pipe (or a
        device) would lose what this read took, so it is not checked.
        """
        if not stat.S_ISREG(os.stat(self._path).st_mode):
            return
        known = self._heads.get(self._name)
        with open(self._path, "rb") as file:
            if position > 0 and known is not None:
                size = known.partition(":")[0]
                head = file.read(int(size)) if size.isdigit() else b""
                if _fingerprint(head) != known:
                    raise CheckpointError(
                        f"{self._name}: the checkpoint resumes at line {position}, but the "
                        f"file is not the one it was counted in (its first {len(head):,} "
                        "bytes differ); was it replaced? To read it from its start, set the "
                        "partition's position to 0 (riprap checkpoint set)"
                    )
                return
            head = file.read(_HEAD)
        self._heads.note(self._name, _fingerprint(head))

    def _check_last_line(self, position: int, length: int, ends_file: bool) -> None:
        """Refuse to resume after a last line read without a line break that has grown since.

        ``length`` is the bytes of line ``position - 1`` now, ``ends_file``
        whether it still ends the file without a line break.
        """
        name = self._name
        known = self._tails.get(name)
        if known is None or known[0] != position:
            return
        read = known[1]
        if length == read:
            if not ends_file:
                del self._tails[name]  # it was whole: only its line break came since
            return
        raise CheckpointError(
            f"{name}: line {position} was read before it was complete (it ended the file "
            f"without a line break, {read:,} bytes) and now holds {length:,} bytes: it was "
            "still being written, so the record read from it was cut (see where that run "
            "sent it, likely the dead letters). To read the line again whole, set the "
            f"partition's position to {position - 1}; to go on after it, to {position} "
            "(riprap checkpoint set). unterminated_last_line='wait' leaves such a line "
            "for the next run"
        )

    def _past_end(self, position: int, lines: int) -> CheckpointError:
        return CheckpointError(
            f"{self._name}: the checkpoint resumes at line {position}, but the file has "
            f"only {lines} lines; was it truncated or replaced?"
        )

    def _taken_to_end(self) -> bool:
        """Whether every line read from the current file is in a batch (none held back)."""
        return True

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
        decode: Parse each line (losslessly, see the module docstring) in the
            worker thread; a line that is not valid JSON is handed over as its
            bytes with a :class:`~riprap.DecodeError`, which the engine
            dead-letters. ``"json"`` is the same as ``True``.
        max_line_bytes: The longest line read (at least 1,024 bytes). A
            longer one is never held whole: its first 1,024 bytes are handed
            over with a ``DecodeError`` (reason ``line_too_long``) naming its
            length, which the engine dead-letters, and the next line is read.
        unterminated_last_line: A last line without a line break: ``"read"``
            (the default) reads it as a record, since it ends the file (many
            exports leave out the last line break), and stops the next run
            with a :class:`~riprap.checkpoints.CheckpointError` if it has grown
            since (it was still being written: the record read was cut);
            ``"wait"`` leaves it for a later run, once its line break is there
            (a file that another program appends to), with a warning.

    Values are the bytes of each line without its line ending (LF, CRLF or a
    lone CR) and, on the first line, without a UTF-8 byte order mark. A line
    that is empty once its ending is removed is skipped; a line of blanks is a
    record (and, decoded, a ``DecodeError``).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``max_line_bytes``: a line is no longer read whole whatever its length.
    """

    def __init__(
        self,
        paths: PathSpec,
        *,
        name: str = "jsonl",
        decode: bool | Literal["json"] = False,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        unterminated_last_line: Literal["read", "wait"] = "read",
    ) -> None:
        if decode not in (False, True, "json"):
            raise ConfigError("decode", f"expected True, False or 'json', not {decode!r}")
        self.max_line_bytes = _checked_line_limit(max_line_bytes)
        super().__init__(paths, name=name, unterminated_last_line=unterminated_last_line)
        self.decode = bool(decode)
        self._file: IO[bytes] | None = None
        self._lines: _LineBlocks | None = None
        self._line = 0

    def _is_open(self) -> bool:
        return self._file is not None

    def _open_file(self, position: int) -> None:
        self._file = open(self._path, "rb")  # noqa: SIM115 (closed by _close)
        self._lines = lines = _LineBlocks(self._file, self.max_line_bytes, self._tail)
        if self._name not in self._tails:
            self._line = lines.skip(position)
            if self._line < position:
                raise self._past_end(position, self._line)
            return
        self._line = lines.skip(position - 1)
        last = lines.take(1) if self._line == position - 1 else []
        if last:
            self._line += 1
            length = last[0].length if type(last[0]) is _Overlong else len(last[0])
        elif self._tail.length:  # held back (unterminated_last_line="wait")
            length = self._tail.length
        else:
            raise self._past_end(position, self._line)
        self._check_last_line(position, length, ends_file=self._tail.length > 0)
        self._line = position

    def _next_batch(self, max_records: int) -> SourceBatch | None:
        lines = self._lines
        assert lines is not None
        first, overlong = self._line, lines.overlong
        chunk = lines.take(max_records, self._max_batch_bytes)
        if first and len(chunk) == max_records and b"" not in chunk and lines.overlong == overlong:
            # The common case: a full run of lines, none empty or too long, not the first.
            self._line += max_records
            taken = cast("list[bytes]", chunk)
            if self.decode:
                batch = self._decoded(taken, range(first, self._line))
            else:
                batch = SourceBatch(self._name, taken, start=first, end=self._line)
            if batch is not None:
                batch.nbytes = lines.taken_bytes
            return batch
        return self._gathered(chunk, max_records, overlong)

    def _gathered(
        self, chunk: list[bytes | _Overlong], max_records: int, overlong: int
    ) -> SourceBatch | None:
        """A batch from ``chunk`` and more lines: empty lines skipped, the BOM removed,
        lines over the limit cut to their first bytes, each with its ``DecodeError``.
        """
        lines = self._lines
        assert lines is not None
        limit = self._max_batch_bytes
        held = lines.taken_bytes
        values: list[bytes | _Overlong] = []
        offsets: list[int] = []
        while True:
            wanted = max_records - len(values)
            first = self._line
            if first == 0 and chunk and type(chunk[0]) is bytes:
                chunk[0] = chunk[0].removeprefix(_BOM)
            self._line += len(chunk)
            if b"" in chunk:
                offsets.extend(first + i for i, line in enumerate(chunk) if line)
                values.extend(line for line in chunk if line)
            else:
                offsets.extend(range(first, self._line))
                values.extend(chunk)
            if len(chunk) < wanted or len(values) >= max_records or lines.capped:
                break
            chunk = lines.take(max_records - len(values), None if limit is None else limit - held)
            held += lines.taken_bytes
        too_long = self._cut(values, offsets) if lines.overlong != overlong else {}
        raw = cast("list[bytes]", values)
        if self.decode and raw:
            batch = self._decoded(raw, offsets, too_long)
        else:
            batch = self._batch(raw, offsets, self._line, too_long)
        if batch is not None:
            batch.nbytes = held
        return batch

    def _cut(self, values: list[bytes | _Overlong], offsets: list[int]) -> dict[int, DecodeError]:
        """Put each over-long line's first bytes in its place; its ``DecodeError`` by index."""
        errors: dict[int, DecodeError] = {}
        for i, value in enumerate(values):
            if type(value) is _Overlong:
                values[i] = value.kept
                error = self._undecodable(
                    f"the line is {value.length} bytes, over max_line_bytes "
                    f"({self.max_line_bytes}); its first {len(value.kept)} bytes are kept",
                    offsets[i] + 1,
                )
                error.reason = "line_too_long"
                errors[i] = error
        return errors

    def _decoded(
        self,
        raw: list[bytes],
        offsets: Sequence[int],
        too_long: Mapping[int, DecodeError] | None = None,
    ) -> SourceBatch | None:
        path = self._name
        values, errors = parse_json_column(
            raw, lambda i: {"source": path, "line": offsets[i] + 1, "partition": path}
        )
        if too_long:
            errors = {**(errors or {}), **too_long}
        return self._batch(values, offsets, self._line, errors or None)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._lines = None


@final
class _RowLines:
    """The lines a ``csv`` reader pulls: decoded one at a time, the current row's kept raw.

    A line that is not valid in the encoding is decoded with ``surrogateescape``
    so that the reader still finds where its row ends; the row is then set
    aside whole (``bad`` says which line and why). So is a row with a line
    over the limit (``too_long``), which the reader sees as one short field.
    """

    __slots__ = (
        "_bom",
        "_encoding",
        "_limit",
        "_lines",
        "_pending",
        "bad",
        "consumed",
        "read_bytes",
        "row",
        "too_long",
    )

    def __init__(
        self, lines: Iterator[bytes | _Overlong], encoding: str, *, bom: bool, limit: int
    ) -> None:
        self._lines = lines
        self._encoding = encoding
        self._bom = bom  # strip a UTF-8 byte order mark from the first line
        self._limit = limit
        self._pending: deque[bytes | _Overlong] = deque()
        self.consumed = 0  # lines handed to the reader: the next line's index
        self.read_bytes = 0  # the bytes of those lines
        self.row: list[bytes | _Overlong] = []
        self.bad: tuple[int, str] | None = None
        self.too_long = False

    def __iter__(self) -> _RowLines:
        return self

    def raw(self, lines: int | None = None) -> bytes:
        """The current row's bytes (its first ``lines`` lines), over-long lines cut short."""
        return b"".join(line.kept if type(line) is _Overlong else line for line in self.row[:lines])

    def __next__(self) -> str:
        raw = self._pending.popleft() if self._pending else next(self._lines)
        self.consumed += 1
        self.read_bytes += len(raw)
        self.row.append(raw)
        if type(raw) is _Overlong:
            self._bom = False
            self.too_long = True
            if self.bad is None:
                self.bad = (
                    self.consumed,
                    f"a line of {raw.length} bytes, over max_line_bytes ({self._limit})",
                )
            return "-\n"  # one field: the row is set aside, whatever its quotes
        if self._bom:
            self._bom = False
            raw = raw.removeprefix(_BOM)
        try:
            return raw.decode(self._encoding)
        except UnicodeDecodeError as exc:
            if self.bad is None:
                why = f"not valid {self._encoding} text at byte {exc.start}: {exc.reason}"
                self.bad = (self.consumed, why)
            return raw.decode(self._encoding, "surrogateescape")

    def start_row(self) -> int:
        """Forget the last row; return the index of the next line (the next row's offset)."""
        self.row = []
        self.bad = None
        self.too_long = False
        return self.consumed

    @property
    def pending(self) -> int:
        """Lines handed back (:meth:`push_back`) that the reader has not taken again yet."""
        return len(self._pending)

    def push_back(self, lines: list[bytes | _Overlong]) -> None:
        """Hand ``lines`` to the reader again, before any line not read yet."""
        self._pending.extendleft(reversed(lines))
        self.consumed -= len(lines)
        self.read_bytes -= sum(map(len, lines))

    def skip(self, count: int) -> int:
        """Skip up to ``count`` lines without decoding them; return how many there were."""
        skipped = _consume(self._lines, count)
        self.consumed += skipped
        return skipped

    def skip_one(self) -> int | None:
        """Skip the next line; return its bytes without its ending (``None``: there is none)."""
        line = next(self._lines, None)
        if line is None:
            return None
        self.consumed += 1
        return line.length if type(line) is _Overlong else len(line.rstrip(b"\r\n"))


@final
class CsvSource(_FileSource):
    """Reads CSV files with a header line into dicts.

    Positions count physical lines (ending at LF, CRLF or a lone CR), 0-based:
    the header is line 0 (after any blank lines) and not a record, so the
    first row is at position 1 and a fresh file resumes from the line after
    the header. A row whose quoted fields span several lines has the offset of
    its first line and covers them all. Empty lines are skipped but counted.
    On resume the header is read again, then lines are skipped up to the
    checkpoint.

    A row that cannot be read as the header says is handed over as its raw
    bytes with a :class:`~riprap.DecodeError` naming the file and line, which
    the engine dead-letters, and the rest of the file goes on:

    - a row whose field count differs from the header's (``csv.DictReader``
      would silently pad or spill it);
    - a row with a line that is not valid text in ``encoding`` (the whole row);
    - a line where the CSV is malformed (a quote never closed, text after a
      closing quote): that line alone, and reading goes on from the next one.

    A file whose header cannot be read (not valid text, malformed, a column
    named twice) is set aside whole: its header line is handed over with the
    ``DecodeError`` and the rest of the file is not read.

    - a row with a line over ``max_line_bytes`` (reason ``line_too_long``):
      the line is never held whole, and the row comes with its first 1,024
      bytes.

    A field may be as long as ``max_line_bytes``, in characters, even quoted
    over several lines: the ``csv`` module's own limit (131,072) is raised to
    it, process-wide. A longer field stops the reader inside its row, whose
    end cannot then be told, so the rest of the file is set aside from that
    row (reason ``field_too_long``) rather than its lines read as rows.

    Args:
        paths: A path, a glob pattern, or a sequence of either.
        name: The step name of the source.
        delimiter: The field separator.
        encoding: The text encoding of the files; one that writes CR and LF as
            those ASCII bytes (utf-8, latin-1, cp1252..., not utf-16).
        max_line_bytes: The longest line read (at least 1,024 bytes).
        unterminated_last_line: A last line without a line break: read it
            (``"read"``, the default) or leave it for a later run (``"wait"``),
            as for :class:`JsonLinesSource`.

    Raises:
        ConfigError: For an unknown or unsupported encoding, a bad delimiter,
            line limit or ``unterminated_last_line``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``max_line_bytes``: a line is no longer read whole whatever its length.
    """

    def __init__(
        self,
        paths: PathSpec,
        *,
        name: str = "csv",
        delimiter: str = ",",
        encoding: str = "utf-8",
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        unterminated_last_line: Literal["read", "wait"] = "read",
    ) -> None:
        self.max_line_bytes = _checked_line_limit(max_line_bytes)
        super().__init__(paths, name=name, unterminated_last_line=unterminated_last_line)
        self.delimiter = _checked_delimiter("CsvSource", delimiter)
        self.encoding = encoding
        self._codec = _line_codec("CsvSource", encoding)
        self._file: IO[bytes] | None = None
        self._rows: _RowLines | None = None
        self._reader: _CsvReader | None = None
        self._header: list[str] = []
        self._set_aside: tuple[int, str, bytes, bool] | None = None

    def _is_open(self) -> bool:
        return self._file is not None

    def _open_file(self, position: int) -> None:
        self._file = file = open(self._path, "rb")  # noqa: SIM115 (closed by _close)
        self._rows = rows = _RowLines(
            _lines(file, self.max_line_bytes, self._tail),
            self._codec,
            bom=self._codec == "utf-8",
            limit=self.max_line_bytes,
        )
        _allow_fields_of(self.max_line_bytes)
        self._reader = csv.reader(rows, delimiter=self.delimiter, strict=True)
        self._set_aside = None
        line, problem = self._read_header()
        if problem is not None:
            if position <= line:  # else the file was set aside before this run
                self._set_aside = (line, problem, rows.raw(1), rows.too_long)
            rows.skip(sys.maxsize)  # the rest of the file is not read
            return
        skip = position - rows.consumed
        if skip > 0 and self._name in self._tails:
            if rows.skip(skip - 1) < skip - 1:
                raise self._past_end(position, rows.consumed)
            length = rows.skip_one()
            if length is None:
                if not self._tail.length:
                    raise self._past_end(position, rows.consumed)
                length = self._tail.length  # held back (unterminated_last_line="wait")
                rows.consumed += 1
            self._check_last_line(position, length, ends_file=self._tail.length > 0)
        elif skip > 0 and rows.skip(skip) < skip:
            raise self._past_end(position, rows.consumed)

    def _taken_to_end(self) -> bool:
        return self._rows is not None and not self._rows.pending

    def _read_header(self) -> tuple[int, str | None]:
        """Read the header (blank lines before it skipped); its line and what is wrong with it."""
        assert self._rows is not None
        assert self._reader is not None
        rows = self._rows
        header: list[str] | None = []
        while header == []:
            line = rows.start_row()
            try:
                header = next(self._reader, None)
            except csv.Error as exc:
                return line, f"the header is not valid CSV: {exc}"
        if rows.bad is not None:
            return line, f"the header is {rows.bad[1]}"
        header = header or []
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            return line, f"the header names {', '.join(map(repr, twice))} more than once"
        self._header = header
        return line, None

    def _next_batch(self, max_records: int) -> SourceBatch | None:
        assert self._rows is not None
        assert self._reader is not None
        if self._set_aside is not None:
            return self._whole_file_aside()
        rows, reader = self._rows, self._reader
        header, width = self._header, len(self._header)
        values: list[Any] = []
        offsets: list[int] = []
        errors: dict[int, DecodeError] = {}
        limit = self._max_batch_bytes
        first_byte = rows.read_bytes
        while len(values) < max_records:
            if limit is not None and rows.read_bytes - first_byte >= limit:
                break
            start = rows.start_row()
            try:
                row = next(reader, None)
            except csv.Error as exc:
                if _FIELD_LIMIT in str(exc):
                    values.append(rows.raw(1).rstrip(b"\r\n"))
                    offsets.append(start)
                    errors[len(values) - 1] = self._rest_aside(start)
                    break
                # Most likely a quote opened on the row's first line and never
                # closed: set that line aside and read on from the next one.
                raw, line, problem = rows.raw(1), start + 1, f"malformed CSV: {exc}"
                too_long = type(rows.row[0]) is _Overlong
                rows.push_back(rows.row[1:])
            else:
                if row is None:
                    break
                if not row:
                    continue
                if rows.bad is None and len(row) == width:
                    values.append(dict(zip(header, row, strict=True)))
                    offsets.append(start)
                    continue
                raw, (line, problem) = rows.raw(), rows.bad or (start + 1, _ragged(width, len(row)))
                too_long = rows.too_long
            error = errors[len(values)] = self._undecodable(problem, line)
            if too_long:
                error.reason = "line_too_long"
            values.append(raw.rstrip(b"\r\n"))
            offsets.append(start)
        batch = self._batch(values, offsets, rows.consumed, errors)
        if batch is not None:
            batch.nbytes = rows.read_bytes - first_byte
        return batch

    def _rest_aside(self, start: int) -> DecodeError:
        """Set aside the rest of the file from the row at ``start``, whose field passes the limit.

        The reader stopped inside the field, so where its row ends cannot be
        told (the field may be quoted over many lines, or its quote never
        closed): reading on from the next line could turn the field's lines
        into rows. The row's first line stands for it all.
        """
        assert self._rows is not None
        self._rows.skip(sys.maxsize)
        error = self._undecodable(
            f"a field passes the CSV field limit ({csv.field_size_limit()} characters; "
            "max_line_bytes raises it): where its row ends cannot be told, so the rest "
            f"of the file, lines {start + 1} to {self._rows.consumed}, is set aside",
            start + 1,
        )
        error.reason = "field_too_long"
        return error

    def _whole_file_aside(self) -> SourceBatch | None:
        assert self._rows is not None
        assert self._set_aside is not None
        line, problem, raw, too_long = self._set_aside
        self._set_aside = None
        error = self._undecodable(f"{problem}; the file is set aside whole", line + 1)
        if too_long:
            error.reason = "line_too_long"
        return SourceBatch(
            self._name,
            [raw.rstrip(b"\r\n")],
            start=line,
            end=max(self._rows.consumed, line + 1),
            errors={0: error},
        )

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._rows = None
            self._reader = None


_FIELD_LIMIT = "field larger than field limit"
"""What the ``csv`` module says of a field over its limit."""


def _allow_fields_of(limit: int) -> None:
    """Raise the ``csv`` module's field limit to ``limit`` characters, process-wide.

    Its default (131,072) is below a line's limit, and a field over it stops
    the reader in the middle of its row. Only raised, never lowered, so a
    higher limit set by anyone else stays.
    """
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def _checked_line_limit(limit: int) -> int:
    """``limit`` if it is a whole number of bytes, at least the bytes an over-long line keeps.

    Raises:
        ConfigError: It is not.
    """
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ConfigError("max_line_bytes", f"expected a number of bytes, not {limit!r}")
    if limit < _KEPT:
        raise ConfigError("max_line_bytes", f"must be at least {_KEPT} bytes, got {limit}")
    return limit


def _ragged(width: int, count: int) -> str:
    return f"expected {width} fields (the header's), got {count}"


def _checked_delimiter(owner: str, delimiter: str) -> str:
    """``delimiter`` if the ``csv`` module takes it and it is not a quote or a line break."""
    try:
        csv.reader([], delimiter=delimiter)
    except TypeError as exc:
        raise ConfigError(f"{owner}.delimiter", str(exc).replace('"', "")) from None
    if delimiter in '\r\n"':
        raise ConfigError(f"{owner}.delimiter", f"cannot be {delimiter!r}")
    return delimiter


def _line_codec(owner: str, encoding: str) -> str:
    """The codec name of ``encoding``, if CSV lines can be split as bytes and decoded one by one.

    ``utf-8-sig`` is read as ``utf-8`` (the byte order mark is skipped anyway).

    Raises:
        ConfigError: The encoding is unknown, not a text encoding, or writes
            CR and LF other than as those ASCII bytes (utf-16, utf-32).
    """
    try:
        name = codecs.lookup(encoding).name
        probe = b'a,"\r\n'.decode(name)
    except LookupError:
        raise ConfigError(f"{owner}.encoding", f"unknown text encoding {encoding!r}") from None
    except UnicodeDecodeError:
        probe = ""
    if probe != 'a,"\r\n':
        raise ConfigError(
            f"{owner}.encoding",
            f"{encoding!r} does not write line breaks as the ASCII bytes CR and LF; "
            "use an ASCII-compatible encoding (utf-8, latin-1, cp1252...)",
        )
    return "utf-8" if name == "utf-8-sig" else name


# -- sinks --------------------------------------------------------------------------


class _AppendSink:
    """What both file sinks share: an append-only file, written and fsync-ed per batch."""

    _newline = b"\n"

    def __init__(self, path: str | os.PathLike[str], *, name: str) -> None:
        self.name = name
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise ConfigError(f"{type(self).__name__}.path", f"{self.path} is a directory")
        self.idempotent = False
        self._fd: int | None = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        """Create or open the file for appending (in a worker thread).

        A missing parent directory is created (durably), as the checkpoint and
        dead-letter stores do.
        """
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
        make_directory(Path(self.path).absolute().parent)
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

    Values are serialised with :func:`encode_json` (integers beyond 64 bits
    exactly; a NaN or an infinity is a :class:`~riprap.DataError` with reason
    ``non_finite_number``, never ``null``), except ``bytes``, which are written
    as they are (an already encoded line, e.g. from a raw
    :class:`JsonLinesSource`) unless they hold a line break.

    Args:
        path: The file; created if missing (its directory too).
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
    Values are written as ``str()`` writes them, so a float NaN or infinity is
    the text ``nan`` or ``inf``, which reads back as the same float.

    Args:
        path: The file; created if missing (its directory too).
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
        twice = sorted({name for name in self.fieldnames if self.fieldnames.count(name) > 1})
        if twice:
            raise ConfigError("fieldnames", f"{self.path}: {twice} named more than once")
        self.delimiter = _checked_delimiter("CsvSink", delimiter)
        _line_codec("CsvSink", encoding)
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
