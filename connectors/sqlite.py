"""SQLite sink: an idempotent upsert by key, one transaction per batch.

Each value becomes one row: its key in the key column (the primary key) and
the value itself as JSON text in the ``value`` column (losslessly, see
:mod:`riprap.connectors.json_codec`: a NaN or an infinity is a
:class:`~riprap.DataError`, never ``null``), plus any fields named in
``columns`` copied into columns of their own for querying. A key or column
integer beyond SQLite's 64 bits is a ``DataError`` (reason ``number_out_of_range``).
A missing parent directory of the database is created on open.
Writing a replayed record rewrites the same row, so replays after a crash have
an exactly-once effect (I2). The database runs in WAL mode with
``synchronous=FULL``, so a committed batch survives a power cut; every blocking
call runs in a worker thread.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel

from riprap import ConfigError, DataError, TransientError
from riprap.connectors.json_codec import encode_json, parse_json_line
from riprap.lowlevel import make_directory, use_wal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from riprap import Batch

__all__ = ("SqliteSink", "read_table", "read_table_sync")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEY_TYPES = (str, int, float, bytes)
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _identifier(option: str, name: str) -> str:
    """``name`` double-quoted for SQL, after checking it is a plain identifier."""
    if not _IDENTIFIER.match(name):
        raise ConfigError(option, f"{name!r} is not a valid SQL identifier (letters, digits, _)")
    return f'"{name}"'


@final
class SqliteSink:
    """Upserts each value into a SQLite table by key; idempotent.

    Args:
        path: The database file; created if missing (the table too).
        table: The table name.
        key: The value field holding the key, or a function ``value -> key``.
            Keys must be ``str``, ``int``, ``float`` or ``bytes``.
        key_column: The key column's name: ``key`` when it is a field name,
            else ``"key"``.
        columns: Value fields also stored in columns of their own (``NULL``
            when missing; non-scalar values as JSON text).
        timeout: Seconds a write waits for another connection's lock before
            failing with :class:`~riprap.TransientError`.
        name: The step name of the sink.

    Raises:
        ConfigError: A table or column name is not a plain SQL identifier, or
            collides with another column.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_conn",
        "_key_field",
        "_key_fn",
        "_lock",
        "_sql",
        "columns",
        "idempotent",
        "key_column",
        "name",
        "path",
        "table",
        "timeout",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        table: str,
        *,
        key: str | Callable[[Any], Any] = "id",
        key_column: str | None = None,
        columns: Iterable[str] | None = None,
        timeout: float = 5.0,
        name: str = "sqlite",
    ) -> None:
        self.name = name
        self.path = str(path)
        if os.path.isdir(self.path):
            raise ConfigError("SqliteSink.path", f"{self.path} is a directory")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigError("SqliteSink.timeout", f"must be a number of seconds, got {timeout!r}")
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ConfigError("SqliteSink.timeout", f"must be finite seconds >= 0, got {timeout!r}")
        self.table = table
        self.idempotent = True
        self.timeout = timeout
        self._key_field = key if isinstance(key, str) else None
        self._key_fn = None if isinstance(key, str) else key
        self.key_column = key_column or self._key_field or "key"
        self.columns = tuple(columns or ())
        names = [self.key_column, "value", *self.columns]
        if len(set(names)) != len(names):
            raise ConfigError("columns", f"column names collide: {names}")
        quoted = [_identifier("key_column", self.key_column), '"value"']
        quoted += [_identifier("columns", column) for column in self.columns]
        self._sql = _Statements(_identifier("table", table), quoted)
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        """Connect, switch to WAL mode and create the table if it is missing.

        Raises:
            ConfigError: The table exists but lacks a needed column.
            sqlite3.Error: The database cannot be opened (the message names it).
        """
        async with self._lock:
            if self._conn is None:
                self._conn = await anyio.to_thread.run_sync(self._open_sync)
            else:
                await anyio.lowlevel.checkpoint()

    async def write(self, batch: Batch) -> None:
        """Upsert the batch in one transaction, committed before this returns.

        Raises:
            DataError: A value has no usable key or is not JSON-serialisable;
                nothing of the batch is written.
            TransientError: The database is busy or locked by another writer.
        """
        async with self._lock:
            await anyio.to_thread.run_sync(self._write_sync, batch)

    async def flush(self) -> None:
        """Nothing is buffered: every ``write`` is committed."""
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the connection."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)

    async def read_all(self) -> dict[Any, Any]:
        """Every row as ``{key: value}``, in insertion order (see :func:`read_table`)."""
        return await read_table(self.path, self.table, key_column=self.key_column)

    def _open_sync(self) -> sqlite3.Connection:
        make_directory(Path(self.path).absolute().parent)
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            use_wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(self._sql.create)
            have = {row[1] for row in conn.execute(self._sql.table_info)}
            missing = [c for c in (self.key_column, "value", *self.columns) if c not in have]
            if missing:
                raise ConfigError("table", f"{self.path}: table {self.table!r} lacks {missing}")
        except sqlite3.Error as exc:
            conn.close()
            raise _naming(exc, self.path) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _write_sync(self, batch: Batch) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"sink {self.name!r} ({self.path}) is not open")
        rows = [self._row(batch, index, value) for index, value in enumerate(batch.items)]
        if not rows:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(self._sql.upsert, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if exc.sqlite_errorcode & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise TransientError(f"{self.path}: {exc}") from exc
            raise _naming(exc, self.path) from exc

    def _row(self, batch: Batch, index: int, value: Any) -> tuple[Any, ...]:
        """The parameters of one upsert; DataError when the value cannot be stored."""
        key = self._key(batch, index, value)
        try:
            row: list[Any] = [key, encode_json(value).decode()]
        except DataError as exc:
            raise self._error(batch, index, f"the value is {exc}", exc.reason) from None
        if self.columns:
            fields: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
            for column in self.columns:
                field = fields.get(column)
                if _too_big(field):
                    problem = f"column {column!r}: {field} is beyond SQLite's 64-bit integers"
                    raise self._error(batch, index, problem, "number_out_of_range")
                row.append(_column_value(field))
        return tuple(row)

    def _key(self, batch: Batch, index: int, value: Any) -> Any:
        if self._key_fn is not None:
            key = self._key_fn(value)
        elif not isinstance(value, Mapping):
            kind = type(value).__name__
            raise self._error(batch, index, f"expected a dict with key field, got {kind}")
        elif self._key_field not in value:
            raise self._error(batch, index, f"the value has no key field {self._key_field!r}")
        else:
            key = value[self._key_field]
        if not isinstance(key, _KEY_TYPES):
            kind = type(key).__name__
            raise self._error(batch, index, f"the key must be str, int, float or bytes, not {kind}")
        if _too_big(key) or (isinstance(key, float) and not math.isfinite(key)):
            raise self._error(batch, index, f"the key {key!r} cannot be stored", "bad_key")
        return key

    def _error(
        self, batch: Batch, index: int, problem: str, reason: str | None = None
    ) -> DataError:
        partition, offset = batch.position(index)
        where = f"record at {partition}@{offset}" if partition is not None else f"item {index}"
        return DataError(f"{self.path}: table {self.table!r}: {where}: {problem}", reason=reason)


@final
class _Statements:
    """The SQL of one sink, built once from quoted identifiers."""

    __slots__ = ("create", "table_info", "upsert")

    def __init__(self, table: str, columns: list[str]) -> None:
        key, rest = columns[0], columns[1:]
        definitions = ", ".join([f"{key} PRIMARY KEY NOT NULL", '"value" TEXT NOT NULL', *rest[1:]])
        self.create = f"CREATE TABLE IF NOT EXISTS {table} ({definitions})"
        self.table_info = f"PRAGMA table_info({table})"
        updates = ", ".join(f"{column} = excluded.{column}" for column in rest)
        self.upsert = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT({key}) DO UPDATE SET {updates}"
        )


def _too_big(value: Any) -> bool:
    """Whether ``value`` is an integer SQLite cannot hold."""
    return isinstance(value, int) and not _I64_MIN <= value <= _I64_MAX


def _column_value(value: Any) -> Any:
    """A field value as SQLite stores it: scalars as they are, the rest as JSON text."""
    if value is None or isinstance(value, str | int | float | bytes):
        return value
    return encode_json(value).decode()


def _naming(exc: sqlite3.Error, path: str) -> sqlite3.Error:
    """The same kind of error with the database path in its message."""
    return type(exc)(f"{path}: {exc}")


def read_table_sync(
    path: str | os.PathLike[str], table: str, *, key_column: str = "id"
) -> dict[Any, Any]:
    """Read a table written by :class:`SqliteSink` back as ``{key: value}``; blocking.

    For tests, demos and inspection from synchronous code (a CLI after the run):
    the whole table is loaded, in insertion order, through a read-only
    connection, so a missing database is an error rather than a new empty file.
    Async code uses :func:`read_table`.

    Raises:
        sqlite3.Error: The database or table cannot be read (the message names the path).
    """
    query = (
        f"SELECT {_identifier('key_column', key_column)}, value "
        f"FROM {_identifier('table', table)} ORDER BY rowid"
    )
    uri = f"file:{urllib.parse.quote(os.fspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            return {key: parse_json_line(value) for key, value in conn.execute(query)}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _naming(exc, os.fspath(path)) from exc


async def read_table(
    path: str | os.PathLike[str], table: str, *, key_column: str = "id"
) -> dict[Any, Any]:
    """:func:`read_table_sync` in a worker thread, for async code."""
    return await anyio.to_thread.run_sync(
        functools.partial(read_table_sync, path, table, key_column=key_column)
    )
