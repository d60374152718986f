"""PostgreSQL sink: an idempotent upsert by key, one COPY and one merge statement per batch.

Each batch is copied (binary COPY, every column as text) into a temporary
table, then merged into the target in one statement: a ``DELETE`` of the keys
whose last operation is a delete and an ``INSERT ... ON CONFLICT DO UPDATE`` of
the rest, with each value cast to its column's type by PostgreSQL itself.
Within a batch only the last operation per key is applied (the order of the
input), so a replay after a crash rewrites the same rows: an exactly-once
effect (I2). A row the database refuses (a constraint, a value its type
cannot hold) fails the batch's transaction with a :class:`~riprap.DataError`;
the engine then writes the records one by one, so only that row is
dead-lettered and the rest are written.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, final

import anyio.lowlevel
import asyncpg

from riprap import ConfigError, DataError

from ._errors import classify
from ._values import as_text

if TYPE_CHECKING:
    from riprap import Batch

__all__ = ("PostgresSink",)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_UPSERT_OPS = frozenset({"c", "u", "r"})

Row = tuple[str | None, ...]
"""One staged row: the operation (``u`` upsert, ``d`` delete) then each column as text."""


def identifier(option: str, name: str) -> str:
    """``name`` double-quoted for SQL, after checking it is a plain identifier."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ConfigError(option, f"{name!r} is not a valid SQL identifier (letters, digits, _)")
    return f'"{name}"'


@final
class PostgresSink:
    """Upserts each value into a PostgreSQL table by key; idempotent.

    Args:
        dsn: The connection string (``postgresql://user@host:port/db``); it is
            never written to a log or an error message.
        table: The target table; it must exist, with a primary key or unique
            index on exactly the ``key`` columns.
        schema: The table's schema.
        key: The key column(s); each value must hold them, not ``None``.
        columns: The columns to write; by default every column of the table.
            A field missing from a value is written as ``NULL``.
        cdc: Values are change events as :class:`PostgresCDCSource` emits them
            (``op`` ``c``/``u``/``r`` upsert ``after``, ``d`` deletes ``before``'s key).
        delete: With ``cdc``, whether a delete event deletes the row; when false
            the row is kept (a soft history) and the event is still done.
        pool_size: Connections in the pool at most.
        timeout: Seconds for acquiring a connection and for each statement.
        name: The step name of the sink.

    Raises:
        ConfigError: A name is not a plain SQL identifier, ``key`` is empty or
            ``pool_size``/``timeout`` is out of range.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_dsn",
        "_pool",
        "_sql",
        "cdc",
        "columns",
        "delete",
        "idempotent",
        "key",
        "name",
        "pool_size",
        "schema",
        "table",
        "timeout",
    )

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        schema: str = "public",
        key: str | Sequence[str] = "id",
        columns: Sequence[str] | None = None,
        cdc: bool = False,
        delete: bool = True,
        pool_size: int = 4,
        timeout: float = 30.0,
        name: str = "postgres",
    ) -> None:
        self.key = (key,) if isinstance(key, str) else tuple(key)
        if not self.key:
            raise ConfigError("PostgresSink.key", "needs at least one key column")
        for option, names in (("table", [table, schema]), ("key", self.key)):
            for one in names:
                identifier(f"PostgresSink.{option}", one)
        self.columns = None if columns is None else tuple(columns)
        for column in self.columns or ():
            identifier("PostgresSink.columns", column)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError("PostgresSink.pool_size", f"must be an int >= 1, got {pool_size!r}")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError("PostgresSink.timeout", f"must be finite seconds > 0: {timeout!r}")
        self._dsn = dsn
        self.table, self.schema, self.cdc, self.delete = table, schema, cdc, delete
        self.pool_size, self.timeout, self.name = pool_size, float(timeout), name
        self.idempotent = True
        self._pool: asyncpg.Pool | None = None
        self._sql: _Statements | None = None

    @property
    def where(self) -> str:
        """The table, for messages (never the DSN, which may hold a password)."""
        return f"table {self.schema}.{self.table}"

    async def open(self) -> None:
        """Create the pool and read the table's columns and types.

        Raises:
            ConfigError: The table is missing, lacks a named column, or has no
                unique index on exactly the key columns.
            TransientError: The server cannot be reached.
        """
        if self._pool is not None:
            await anyio.lowlevel.checkpoint()
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self.pool_size, timeout=self.timeout
            )
        except Exception as exc:
            raise classify(exc, f"{self.name}: connecting for {self.where}") from None
        try:
            async with pool.acquire(timeout=self.timeout) as conn:
                self._sql = await self._statements(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _statements(self, conn: asyncpg.Connection) -> _Statements:
        relation = f"{identifier('schema', self.schema)}.{identifier('table', self.table)}"
        types = dict(await conn.fetch(_COLUMNS, relation))
        if not types:
            raise ConfigError("PostgresSink.table", f"{self.where} does not exist")
        columns = self.columns or tuple(types)
        missing = [c for c in (*self.key, *columns) if c not in types]
        if missing:
            raise ConfigError("PostgresSink.columns", f"{self.where} lacks columns {missing}")
        if not any(set(index) == set(self.key) for (index,) in await conn.fetch(_UNIQUE, relation)):
            raise ConfigError(
                "PostgresSink.key",
                f"{self.where} has no primary key or unique index on exactly {list(self.key)}",
            )
        columns = tuple(dict.fromkeys((*self.key, *columns)))
        return _Statements(relation, self.key, {c: types[c] for c in columns})

    async def write(self, batch: Batch) -> None:
        """Merge the batch in one transaction, committed before this returns.

        Raises:
            DataError: A value has no usable key or is not a mapping, or the
                database refused a row (nothing of the batch is written).
            TransientError: The connection failed or the server is unavailable.
        """
        pool, sql = self._pool, self._sql
        if pool is None or sql is None:
            raise RuntimeError(f"sink {self.name!r} ({self.where}) is not open")
        rows = self._rows(batch, sql)
        if not rows:
            await anyio.lowlevel.checkpoint()
            return
        try:
            async with pool.acquire(timeout=self.timeout) as conn, conn.transaction():
                await conn.execute(sql.create_stage, timeout=self.timeout)
                await conn.copy_records_to_table(
                    sql.stage, records=rows, columns=sql.stage_columns, timeout=self.timeout
                )
                deletes = any(row[0] == "d" for row in rows)
                await conn.execute(sql.merge if deletes else sql.upsert, timeout=self.timeout)
        except Exception as exc:
            raise classify(exc, f"{self.name}: {self.where}") from exc

    async def flush(self) -> None:
        """Nothing is buffered: every ``write`` is committed."""
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the pool (waits for no connection: none is held between writes)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(self.timeout) as scope:
                await pool.close()
            if scope.cancelled_caught:
                pool.terminate()

    def _rows(self, batch: Batch, sql: _Statements) -> list[Row]:
        """The last operation per key as staged text rows (one write per key and statement)."""
        end = 1 + len(self.key)
        if not self.cdc:
            plain = _plain_rows(batch.items, sql.columns, end)
            if plain is not None:
                return plain
        last: dict[tuple[str | None, ...], Row] = {}
        for index, value in enumerate(batch.items):
            row = self._row(batch, index, value, sql.columns)
            if row is not None:
                last[row[1:end]] = row
        return list(last.values())

    def _row(self, batch: Batch, index: int, value: Any, columns: Sequence[str]) -> Row | None:
        op, fields = "u", value
        if self.cdc:
            op, fields = self._change(batch, index, value)
            if op == "d" and not self.delete:
                return None
        if not isinstance(fields, Mapping):
            kind = type(fields).__name__
            raise self._error(batch, index, f"expected a mapping of columns, got {kind}")
        get = fields.get
        try:
            row = (op, *[as_text(get(column)) for column in columns])
        except DataError as exc:
            raise self._error(batch, index, str(exc), exc.reason) from None
        if None in row[1 : 1 + len(self.key)]:
            raise self._error(batch, index, f"a key column of {list(self.key)} is missing")
        return row

    def _change(self, batch: Batch, index: int, value: Any) -> tuple[str, Any]:
        """A change event's operation and the row image it applies."""
        op = value.get("op") if isinstance(value, Mapping) else None
        if op in _UPSERT_OPS:
            return "u", value.get("after")
        if op == "d":
            return "d", value.get("before")
        problem = f"expected a change event with op c, u, r or d, got op {op!r}"
        raise self._error(batch, index, problem, "unsupported_change")

    def _error(
        self, batch: Batch, index: int, problem: str, reason: str | None = None
    ) -> DataError:
        partition, offset = batch.position(index)
        where = f"record at {partition}@{offset}" if partition is not None else f"item {index}"
        return DataError(f"{self.name}: {self.where}: {where}: {problem}", reason=reason)


_OTHER = object()
"""Stands for a value :func:`_plain_rows` leaves to :func:`as_text`."""


def _plain_rows(items: list[Any], columns: Sequence[str], end: int) -> list[Row] | None:
    """The rows of a batch of plain dicts of text, numbers and nulls, converted inline.

    The common batch costs no function call per value; ``None`` when a value
    needs :func:`as_text` or a record is not a dict or lacks a key column, and
    the record-by-record path then converts it or names what is wrong.
    """
    last: dict[tuple[str | None, ...], Row] = {}
    for value in items:
        if value.__class__ is not dict:
            return None
        row: tuple[Any, ...] = (
            "u",
            *[
                x
                if x.__class__ is str or x is None
                else str(x)
                if x.__class__ is int
                else repr(x)
                if x.__class__ is float
                else _OTHER
                for x in map(value.get, columns)
            ],
        )
        if _OTHER in row or None in row[1:end]:
            return None
        last[row[1:end]] = row  # text and nulls only: no _OTHER left
    return list(last.values())


_COLUMNS = """
SELECT attname::text, format_type(atttypid, atttypmod)
FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
ORDER BY attnum
"""

_UNIQUE = """
SELECT array_agg(a.attname::text)
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
GROUP BY i.indexrelid
"""


@final
class _Statements:
    """The SQL of one sink, built once from checked identifiers and the table's types."""

    __slots__ = ("columns", "create_stage", "merge", "stage", "stage_columns", "upsert")

    def __init__(self, relation: str, key: Sequence[str], types: Mapping[str, str]) -> None:
        self.columns = tuple(types)
        self.stage = f"riprap_stage_{zlib.crc32(relation.encode()):08x}"
        self.stage_columns = ["riprap_op", *self.columns]
        text_columns = ", ".join(f'"{c}" text' for c in self.stage_columns)
        self.create_stage = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ({text_columns}) ON COMMIT DELETE ROWS"
        )
        names = ", ".join(f'"{c}"' for c in self.columns)
        casts = ", ".join(f's."{c}"::{t}' for c, t in types.items())
        match = " AND ".join(f't."{c}" = s."{c}"::{types[c]}' for c in key)
        rest = [c for c in self.columns if c not in key]
        update = (
            "DO UPDATE SET " + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in rest)
            if rest
            else "DO NOTHING"
        )
        conflict = ", ".join(f'"{c}"' for c in key)
        self.upsert = (
            f"INSERT INTO {relation} AS t ({names}) SELECT {casts} FROM {self.stage} s "
            f"WHERE s.riprap_op = 'u' ON CONFLICT ({conflict}) {update}"
        )
        self.merge = (
            f"WITH gone AS (DELETE FROM {relation} t USING {self.stage} s "
            f"WHERE s.riprap_op = 'd' AND {match}) {self.upsert}"
        )
