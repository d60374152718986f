"""Where dead letters are kept: the sink protocol, JSON Lines and SQLite stores, readers.

A dead-letter write is part of completing a record (I6): a record counts as
done only once its letter is durable, so ``write`` returns only after an
``fsync`` (JSON Lines) or a committed transaction (SQLite). Both stores create
their files with mode 0600 whatever the umask, because letters hold raw
payloads.

JSON Lines
    One envelope per line in ``path``; when a write would take the file past
    ``max_bytes`` the file is rotated (``path`` -> ``path.1`` -> ``path.2`` ...,
    up to ``path.<backups>``). Rotation never deletes a letter on its own: when
    ``path.<backups>`` still holds letters the store is full, and the write
    fails with :class:`DeadLetterStoreFullError` (the run then stops like on any
    unwritable store, its position not moved past the records: I6) until they
    are purged or the limits raised. Only ``retention="delete_oldest"`` lets a
    rotation delete that file; the letters it held are logged and counted in
    :attr:`JsonLinesDeadLetters.deleted` (the run report and the
    ``riprap_dead_letters_deleted_total`` metric show it, I7). An exclusive lock
    on ``path + ".lock"`` keeps a second writer, and :func:`purge_dead_letters`,
    off the files while a sink has them open. A letter written again (the
    failing run restarted after a crash) is appended again: readers fold it.

SQLite
    One row per letter in the table ``riprap_dead_letters``, unique on ``id``:
    writing a letter again changes nothing (the first copy stays), so the store
    is idempotent. A table made without that constraint gets it when a sink
    opens the store (or a purge runs), its repeats folded first. Many writers
    may share it.

Readers (:func:`read_dead_letters`) tell the formats apart by the file's
header and read in the order letters were written: rotated JSON Lines files
oldest first, SQLite rows by insertion. They give one letter per ``id``, its
first copy, and count the other copies as repeats in a :class:`LetterIds`
(exact, in bounded memory). Read a store that no sink is rotating at the same
time: a rotation under a reader can make it skip or repeat a file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import tempfile
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, final, runtime_checkable

import anyio.lowlevel
import anyio.to_thread
import orjson

from riprap._core.errors import ConfigError
from riprap._core.files import fsync_directory, make_directory
from riprap._core.sqlite_wal import use_wal
from riprap.deadletters._envelope import DeadLetter
from riprap.deadletters._ids import LetterIds

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Sequence

log = logging.getLogger("riprap.dlq")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLE = "riprap_dead_letters"
_COLUMNS = tuple(f.name for f in fields(DeadLetter))
_PAGE = 256

# What a full JSON Lines store does: refuse the write, or delete its oldest file (counted).
_RETENTIONS = ("keep", "delete_oldest")


class DeadLetterStoreFullError(OSError):
    """A JSON Lines store's files are full of letters nobody purged; nothing was deleted.

    Its ``errno`` is ``ENOSPC``. The run stops without losing a record, as for
    any dead-letter store that cannot be written.

    .. versionadded:: 0.1
    """


@runtime_checkable
class DeadLetterSink(Protocol):
    """Stores dead letters durably.

    Contract: when ``write`` returns, every letter it was given is durable
    (fsynced or committed); if it raises, none may be counted as written and
    the records stay not done (I6). ``write`` never blocks the event loop.

    Optional: a store that deletes letters under a retention its user
    configured has an ``int`` attribute ``deleted``, the letters it deleted
    since it opened; the run reports it (I7). No store deletes letters without
    such a setting.
    """

    name: str

    async def open(self) -> None: ...

    async def write(self, letters: Sequence[DeadLetter]) -> None: ...

    async def aclose(self) -> None: ...


@final
@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Selects dead letters; ``None`` fields match everything.

    Attributes:
        stage: The stage the record failed in.
        error_type: The error type, fully qualified or by its bare class name.
        reason: The dead-letter reason (``"data_error"``, ``"retries_exhausted"``...).
        since: Keep letters whose last failure is at or after this epoch time.
        until: Keep letters whose last failure is before this epoch time.

    .. versionadded:: 0.1
    """

    stage: str | None = None
    error_type: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` passes every criterion that is set."""
        if self.stage is not None and letter.stage != self.stage:
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.error_type is not None and self.error_type not in (
            letter.error_type,
            letter.error_type.rpartition(".")[2],
        ):
            return False
        if self.since is not None and letter.last_failure_at < self.since:
            return False
        return self.until is None or letter.last_failure_at < self.until


@final
class JsonLinesDeadLetters:
    """Dead letters as JSON Lines, fsynced per write and rotated by size; POSIX only.

    Args:
        path: The current file; rotated files are ``path.1`` (newest) to ``path.N``.
        max_bytes: Rotate before a write that would take the file past this size.
            A single write bigger than this gets a file of its own.
        backups: How many rotated files there may be: the store holds up to
            ``backups + 1`` files of about ``max_bytes``.
        retention: ``"keep"`` (the default): when a rotation would delete
            ``path.<backups>`` while it holds letters, the write fails with
            :class:`DeadLetterStoreFullError` and nothing is deleted.
            ``"delete_oldest"``: the rotation deletes that file; its letters are
            logged and counted in :attr:`deleted`.
        name: The sink's name in metrics and logs.

    Attributes:
        deleted: Letters rotations deleted since the sink opened (only with
            ``retention="delete_oldest"``); the run report and the
            ``riprap_dead_letters_deleted_total`` metric show it.

    Raises:
        ConfigError: ``max_bytes`` or ``backups`` is less than 1, or
            ``retention`` is neither ``"keep"`` nor ``"delete_oldest"``.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_fd",
        "_lock",
        "_lock_fd",
        "_size",
        "backups",
        "deleted",
        "max_bytes",
        "name",
        "path",
        "retention",
    )

    idempotent = False
    """A letter written again is appended again (readers fold the repeats)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 5,
        retention: Literal["keep", "delete_oldest"] = "keep",
        name: str = "dlq",
    ) -> None:
        if max_bytes < 1:
            raise ConfigError("max_bytes", f"must be at least 1, got {max_bytes}")
        if backups < 1:
            raise ConfigError("backups", f"must be at least 1, got {backups}")
        if retention not in _RETENTIONS:
            raise ConfigError("retention", f"must be 'keep' or 'delete_oldest', got {retention!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.retention = retention
        self.name = name
        self.deleted = 0
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()

    async def open(self) -> None:
        """Create or reopen the file and take the writer's lock.

        A last line left unfinished by a crash (never acknowledged) is cut off.

        Raises:
            OSError: The file cannot be created, or another writer holds it.
        """
        await anyio.to_thread.run_sync(self._open)

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        """Append ``letters`` and fsync; all or nothing.

        Raises:
            DeadLetterStoreFullError: The rotation this write needs would delete
                letters, and ``retention`` is ``"keep"``; nothing was written.
            OSError: The write failed; whatever part of it reached the file is cut off.
        """
        if not letters:
            await anyio.lowlevel.checkpoint()
            return
        data = b"".join([letter.to_json() + b"\n" for letter in letters])
        await anyio.to_thread.run_sync(self._append, data)

    async def aclose(self) -> None:
        """Close the file and release the lock; idempotent."""
        await anyio.to_thread.run_sync(self._close)

    def _open(self) -> None:
        with self._lock:
            if self._lock_fd is not None:  # already open
                return
            make_directory(self.path.parent)
            self._lock_fd = _lock_exclusive(_lock_path(self.path))
            self.deleted = 0
            try:
                self._open_file()
            except BaseException:
                self._close_unlocked()
                raise

    def _open_file(self) -> None:
        fd = _open_private(self.path, os.O_RDWR | os.O_APPEND)
        self._fd = fd
        self._size = _repair_tail(fd, self.path)
        fsync_directory(self.path.parent)

    def _append(self, data: bytes) -> None:
        with self._lock:
            if self._lock_fd is None:
                raise RuntimeError(f"dead-letter sink {self.name!r}: write before open")
            if self._fd is None:  # a failed rotation left no file open: try again
                self._open_file()
            elif self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            assert self._fd is not None
            fd = self._fd
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                # Cut off a partial line so that the next write starts clean.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
                raise
            self._size += len(data)

    def _rotate(self) -> None:
        """path -> path.1 -> ... -> path.N (N = backups), if path.N holds no letter.

        Raises:
            DeadLetterStoreFullError: path.N holds letters and ``retention`` is "keep".
        """
        assert self._fd is not None
        oldest = _backup(self.path, self.backups)
        doomed = _count_letters(oldest)
        if doomed and self.retention == "keep":
            raise DeadLetterStoreFullError(
                errno.ENOSPC,
                f"dead-letter store {self.path} is full: rotating would delete {doomed}"
                f" letter(s) in {oldest.name} (max_bytes={self.max_bytes},"
                f" backups={self.backups}). Replay and purge them (riprap dlq purge),"
                " raise max_bytes or backups, or set retention='delete_oldest' to let"
                " rotation delete the oldest letters (counted)",
            )
        os.close(self._fd)
        self._fd = None
        try:
            # Gone first: the renames below then never overwrite a file.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(oldest)
            if doomed:
                self.deleted += doomed
                log.warning(
                    "dead-letter file %s deleted by rotation with %d letter(s)"
                    " (retention=delete_oldest, backups=%d)",
                    oldest,
                    doomed,
                    self.backups,
                )
            for i in range(self.backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(_backup(self.path, i), _backup(self.path, i + 1))
            os.replace(self.path, _backup(self.path, 1))
        finally:
            # Reopen even after a failed rename (the file then grows past max_bytes
            # until a later rotation succeeds). The directory fsync that opening
            # does also makes the renames durable.
            self._open_file()

    def _close(self) -> None:
        with self._lock:
            self._close_unlocked()

    def _close_unlocked(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)  # closing the lock file releases the lock
        self._fd = self._lock_fd = None


@final
class SqliteDeadLetters:
    """Dead letters in an SQLite table, one transaction per write; one row per ``id``.

    The table has a unique constraint on ``id`` and a letter written again is
    ignored (``ON CONFLICT ("id") DO NOTHING``): the first copy stays. Opening
    a table made without the constraint adds it, folding the rows of repeated
    ids into the first (a logged, counted migration).

    Args:
        path: The database file (created with mode 0600, with its directory).
        name: The sink's name in metrics and logs.
        timeout: Seconds to wait for another writer's lock before failing.

    .. versionadded:: 0.1
    """

    __slots__ = ("_connection", "_lock", "name", "path", "timeout")

    idempotent = True
    """A letter written again is ignored (same ``id``): one row per letter."""

    def __init__(
        self, path: str | os.PathLike[str], *, name: str = "dlq", timeout: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        """Create the database and table if needed; give an older table its unique ``id``.

        Raises:
            sqlite3.Error: The database cannot be opened or is not usable.
            OSError: The file or its directory cannot be created.
        """
        await anyio.to_thread.run_sync(self._open)

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        """Insert ``letters`` in one transaction, committed before returning; repeats are ignored.

        Raises:
            sqlite3.Error: The transaction failed and was rolled back.
        """
        if not letters:
            await anyio.lowlevel.checkpoint()
            return
        rows = [_row(letter) for letter in letters]
        await anyio.to_thread.run_sync(self._write, rows)

    async def aclose(self) -> None:
        """Close the connection; idempotent."""
        await anyio.to_thread.run_sync(self._close)

    def _open(self) -> None:
        with self._lock:
            if self._connection is None:
                self._connection = _connect(self.path, timeout=self.timeout, create=True)

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        with self._lock:
            db = self._connection
            if db is None:
                raise RuntimeError(f"dead-letter sink {self.name!r}: write before open")
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_INSERT, rows)
            except BaseException:
                db.rollback()
                raise
            db.commit()

    def _close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    "id"               TEXT PRIMARY KEY NOT NULL,
    "pipeline"         TEXT NOT NULL,
    "stage"            TEXT NOT NULL,
    "reason"           TEXT NOT NULL,
    "error_type"       TEXT NOT NULL,
    "message"          TEXT NOT NULL,
    "traceback"        TEXT NOT NULL,
    "attempts"         INTEGER NOT NULL,
    "first_failure_at" REAL NOT NULL,
    "last_failure_at"  REAL NOT NULL,
    "source"           TEXT NOT NULL,
    "partition"        TEXT,
    "offset"           INTEGER,
    "key"              TEXT,
    "key_encoding"     TEXT,
    "value"            TEXT,
    "value_encoding"   TEXT,
    "headers"          TEXT NOT NULL,  -- JSON: [[name, encoding, data], ...]
    "timestamp"        REAL,
    "riprap_version"   TEXT NOT NULL,
    "config_hash"      TEXT NOT NULL,
    "trace_id"         TEXT,
    "idempotency_key"  TEXT NOT NULL,
    "version"          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {_TABLE}_last_failure_at ON {_TABLE} ("last_failure_at");
"""
# Not INSERT OR IGNORE: that would also skip, silently, a row breaking a NOT NULL
# constraint. This ignores exactly a second copy of an id.
_INSERT = (
    f"INSERT INTO {_TABLE} ({_quoted(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
    ' ON CONFLICT ("id") DO NOTHING'
)
_UNIQUE_INDEX = f"{_TABLE}_id"


def _row(letter: DeadLetter) -> tuple[Any, ...]:
    headers = orjson.dumps([list(header) for header in letter.headers]).decode()
    return tuple(headers if name == "headers" else getattr(letter, name) for name in _COLUMNS)


def _connect(path: Path, *, timeout: float, create: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (every write BEGINs its own transaction)."""
    if create:
        make_directory(path.parent)
        # SQLite gives the -wal and -shm files the database file's mode.
        os.close(_open_private(path, os.O_RDWR))
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA synchronous = FULL")  # fsync the log on every commit
        if create:
            use_wal(db, timeout)
            db.executescript(_SCHEMA)
            ensure_unique_ids(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _has_unique_ids(db: sqlite3.Connection) -> bool:
    """Whether the dead-letter table has a unique index on exactly ``id`` (a primary key does)."""
    for row in db.execute(f"PRAGMA index_list({_TABLE})").fetchall():
        name, unique = row[1], row[2]
        if unique and [info[2] for info in db.execute(f'PRAGMA index_info("{name}")')] == ["id"]:
            return True
    return False


def ensure_unique_ids(db: sqlite3.Connection, path: Path) -> int:
    """Give a dead-letter table made without it a unique ``id``; return the repeats folded.

    The first row of each id (the lowest rowid: the first written) is kept, the
    later copies deleted, and a unique index added, in one transaction.

    Raises:
        sqlite3.Error: The table does not exist or cannot be changed.
    """
    if _has_unique_ids(db):
        return 0
    db.execute("BEGIN IMMEDIATE")
    try:
        if _has_unique_ids(db):  # another connection did it meanwhile
            db.rollback()
            return 0
        folded: int = db.execute(
            f"DELETE FROM {_TABLE} WHERE rowid NOT IN"
            f' (SELECT MIN(rowid) FROM {_TABLE} GROUP BY "id")'
        ).rowcount
        db.execute(f'CREATE UNIQUE INDEX "{_UNIQUE_INDEX}" ON {_TABLE} ("id")')
    except BaseException:
        db.rollback()
        raise
    db.commit()
    log.warning(
        "%s: the dead-letter table had no unique id; added one, folding %d repeated row(s)",
        path,
        folded,
    )
    return folded


def read_dead_letters(
    path: str | os.PathLike[str], *, seen: LetterIds | None = None
) -> Generator[DeadLetter, None, None]:
    """Every dead letter stored at ``path``, one per id, in the order written (blocking I/O).

    SQLite or JSON Lines is told by the file's header. For JSON Lines the
    rotated files come first, oldest first. A last line without its newline
    (a write a crash cut short, never acknowledged) is skipped with a warning.
    Of the copies of one ``id`` (a letter written again after a crash) only
    the first is given.

    Args:
        path: The store.
        seen: Where the ids read are kept; its ``repeats`` then counts the
            copies folded. A private one (closed at the end) when ``None``.

    Raises:
        FileNotFoundError: Nothing is stored at ``path``.
        ValueError: A letter is corrupt; the message names the file and line.
        sqlite3.Error: The database cannot be read.
    """
    ids = LetterIds() if seen is None else seen
    try:
        for letter, first in scan_store(path, ids):
            if first:
                yield letter
    finally:
        if seen is None:
            ids.close()


def scan_store(
    path: str | os.PathLike[str], seen: LetterIds
) -> Generator[tuple[DeadLetter, bool], None, None]:
    """Every stored copy of every letter, in order, with whether it is its id's first.

    ``seen`` remembers the ids and counts the repeats; an SQLite table with a
    unique ``id`` cannot repeat one, so its ids are not kept at all.
    """
    path = Path(path)
    if is_sqlite(path):
        yield from _read_sqlite(path, seen)
    else:
        for letter in _read_json_lines(path):
            yield letter, seen.add(letter.id)


def is_sqlite(path: Path) -> bool:
    """Whether ``path`` is an SQLite database (rather than JSON Lines)."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return False
    # A database still empty in its main file keeps everything in the WAL.
    return head == _SQLITE_MAGIC or (not head and Path(f"{path}-wal").exists())


def _read_sqlite(path: Path, seen: LetterIds) -> Iterator[tuple[DeadLetter, bool]]:
    # Page by rowid: no read transaction stays open while the caller works.
    db = _connect(path, timeout=30.0, create=False)
    try:
        unique = _has_unique_ids(db)  # else a table an older riprap made: fold here
        last = 0
        while True:
            try:
                rows = db.execute(
                    f"SELECT rowid, {_quoted(_COLUMNS)} FROM {_TABLE}"
                    " WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, _PAGE),
                ).fetchall()
            except sqlite3.OperationalError as exc:
                raise ValueError(f"{path}: not a riprap dead-letter database: {exc}") from None
            for row in rows:
                last = row[0]
                letter = _from_row(path, row)
                yield letter, unique or seen.add(letter.id)
            if len(rows) < _PAGE:
                return
    finally:
        db.close()


def _from_row(path: Path, row: Sequence[Any]) -> DeadLetter:
    raw = dict(zip(_COLUMNS, row[1:], strict=True))
    try:
        raw["headers"] = orjson.loads(raw["headers"])
        return DeadLetter.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} (rowid {row[0]}): {exc}") from None


def _read_json_lines(path: Path) -> Iterator[DeadLetter]:
    files = json_lines_files(path)
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no dead letters stored here", str(path))
    for file in files:
        with file.open("rb") as lines:
            yield from _parse_lines(file, lines)


def _parse_lines(file: Path, lines: IO[bytes]) -> Iterator[DeadLetter]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            letter = DeadLetter.from_json(line)
        except ValueError as exc:
            if not line.endswith(b"\n"):
                log.warning("%s:%d: skipped an unfinished last line (%s)", file, number, exc)
                return
            raise ValueError(f"{file}:{number}: {exc}") from None
        yield letter


def json_lines_files(path: Path) -> list[Path]:
    """The files of a JSON Lines store that exist, oldest first: ``path.N`` .. ``path``."""
    prefix = path.name + "."
    numbered = []
    with contextlib.suppress(FileNotFoundError):
        for entry in path.parent.iterdir():
            suffix = entry.name[len(prefix) :]
            if entry.name.startswith(prefix) and suffix.isdigit():
                numbered.append((int(suffix), entry))
    files = [entry for _, entry in sorted(numbered, reverse=True)]
    return [*files, path] if path.exists() else files


def purge_dead_letters(
    path: str | os.PathLike[str], *, before: float, seen: LetterIds | None = None
) -> int:
    """Delete the letters whose last failure is earlier than ``before``; return how many.

    Letters are judged by id, as readers see them: a letter goes (every copy
    of it) when its first copy failed last before ``before``. Repeats go in
    any case (they are folded: the first copy of a kept letter stays), and
    ``seen.repeats`` counts them.

    SQLite rows are deleted in one transaction (a table without a unique
    ``id`` first gets one, its repeats folded). JSON Lines files are rewritten
    one by one, each atomically (temp file, fsync, rename, directory fsync,
    mode 0600); files with nothing to remove are left alone.

    Args:
        path: The store.
        before: Epoch seconds: letters last failed before this go.
        seen: Where the ids read are kept; its ``repeats`` then counts the
            repeated copies removed. A private one when ``None``.

    Raises:
        FileNotFoundError: Nothing is stored at ``path``.
        OSError: A sink is writing the JSON Lines files (``EBUSY``), or I/O failed.
        ValueError: A JSON Lines letter is corrupt (nothing after it is rewritten).
        sqlite3.Error: The database cannot be changed.
    """
    path = Path(path)
    ids = LetterIds() if seen is None else seen
    try:
        if is_sqlite(path):
            return _purge_sqlite(path, before, ids)
        files = json_lines_files(path)
        if not files:
            raise FileNotFoundError(errno.ENOENT, "no dead letters stored here", str(path))
        lock_fd = _lock_exclusive(_lock_path(path))
        try:
            return sum(_purge_file(file, before, ids) for file in files)
        finally:
            os.close(lock_fd)
    finally:
        if seen is None:
            ids.close()


def _purge_sqlite(path: Path, before: float, seen: LetterIds) -> int:
    db = _connect(path, timeout=30.0, create=False)
    try:
        seen.repeats += ensure_unique_ids(db, path)
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = db.execute(
                f'DELETE FROM {_TABLE} WHERE "last_failure_at" < ?', (before,)
            ).rowcount
        except BaseException:
            db.rollback()
            raise
        db.commit()
        return removed
    finally:
        db.close()


def _purge_file(file: Path, before: float, seen: LetterIds) -> int:
    """Rewrite ``file`` without old letters and repeats; return how many letters went.

    Files are passed oldest first with the same ``seen``, so a first copy is
    always met before its repeats. An unfinished last line (never
    acknowledged) goes too, as a writer would cut it.
    """
    removed = 0
    repeats = seen.repeats
    torn = False
    fd, temp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, file.open("rb") as lines:
            os.fchmod(out.fileno(), 0o600)
            for number, line in enumerate(lines, 1):
                try:
                    letter = DeadLetter.from_json(line) if line.strip() else None
                except ValueError as exc:
                    if line.endswith(b"\n"):
                        raise ValueError(f"{file}:{number}: {exc}") from None
                    log.warning("%s:%d: dropped an unfinished last line (%s)", file, number, exc)
                    torn = True
                    continue
                if letter is None:
                    out.write(line)
                elif not seen.add(letter.id):
                    pass  # a repeat: counted in seen.repeats
                elif letter.last_failure_at < before:
                    removed += 1
                else:
                    out.write(line)
            out.flush()
            os.fsync(out.fileno())
        if removed or torn or seen.repeats > repeats:
            os.replace(temp, file)
            fsync_directory(file.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return removed


def deleted_letters(sink: object) -> int:
    """Letters ``sink`` deleted under a retention its user configured (0 if it never does)."""
    deleted = getattr(sink, "deleted", 0)
    return deleted if isinstance(deleted, int) and not isinstance(deleted, bool) else 0


def _count_letters(file: Path) -> int:
    """The letters (non-blank lines) in ``file``; 0 if it does not exist."""
    try:
        with file.open("rb") as lines:
            return sum(1 for line in lines if line.strip())
    except FileNotFoundError:
        return 0


def _backup(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number}")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _open_private(path: Path, flags: int) -> int:
    """Open (creating) ``path`` with mode 0600, tightening an existing file's mode."""
    # The umask can only narrow 0o600; fchmod also repairs an existing, looser file.
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_exclusive(path: Path) -> int:
    """Hold an exclusive ``flock`` on ``path`` (created 0600); fails at once if taken."""
    # fcntl is POSIX-only; importing it here keeps `import riprap` working elsewhere.
    import fcntl

    fd = _open_private(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(
            errno.EBUSY, "another dead-letter writer or purge holds this file", str(path)
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _repair_tail(fd: int, path: Path) -> int:
    """Cut an unfinished last line (a write cut short by a crash); return the file size."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - 65_536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    log.warning("%s: cut off %d bytes of an unfinished last line", path, size - end)
    os.ftruncate(fd, end)
    os.fsync(fd)
    return end
