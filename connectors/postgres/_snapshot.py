"""The initial snapshot: every row of the publication's tables, read inside one snapshot.

A ``REPEATABLE READ`` transaction fixes the snapshot at its first statement,
which also reads the snapshot's transaction ids and the WAL insert position
(the :class:`SnapshotCut`). Each table is then read through a cursor, a few
rows at a time (bounded memory), every column cast to ``text`` so that a row
reads exactly as the change stream would show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import asyncpg

from ._positions import SnapshotCut, parse_lsn
from ._values import converter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_TABLES = """
SELECT c.oid, n.nspname::text, c.relname::text
FROM pg_publication_tables p
JOIN pg_namespace n ON n.nspname = p.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
WHERE p.pubname = $1 ORDER BY 2, 3
"""

_COLUMNS = """
SELECT a.attname::text, a.atttypid::int, CASE c.relreplident
    WHEN 'f' THEN true
    WHEN 'i' THEN EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid
                          AND i.indisreplident AND a.attnum = ANY(i.indkey))
    WHEN 'd' THEN EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid
                          AND i.indisprimary AND a.attnum = ANY(i.indkey))
    ELSE false END
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.oid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""

_CUT = """
SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text,
       (extract(epoch FROM now()) * 1000)::bigint
"""


@final
@dataclass(frozen=True, slots=True)
class Shape:
    """How to read one table's rows: column names, text converters, key columns."""

    schema: str
    table: str
    names: tuple[str, ...]
    converters: tuple[Callable[[str], Any], ...]
    keys: tuple[str, ...]

    def row(self, texts: Sequence[str | None]) -> dict[str, Any]:
        """A row of texts as ``{column: value}``."""
        return {
            name: None if text is None else convert(text)
            for name, convert, text in zip(self.names, self.converters, texts, strict=True)
        }


def quote(name: str) -> str:
    """An identifier from the catalog, quoted for SQL."""
    return '"' + name.replace('"', '""') + '"'


@final
class SnapshotReader:
    """Reads the publication's tables table by table inside one snapshot; closes when done."""

    def __init__(self, conn: asyncpg.Connection, transaction: Any, shapes: list[Shape]) -> None:
        self._conn = conn
        self._transaction = transaction
        self._pending = shapes
        self._cursor: Any = None
        self._shape: Shape | None = None

    @classmethod
    async def begin(
        cls, dsn: str, publication: str, connect_timeout: float
    ) -> tuple[SnapshotReader, SnapshotCut, int]:
        """Start the snapshot; return the reader, its cut and its time (Unix ms)."""
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
        try:
            transaction = conn.transaction(isolation="repeatable_read", readonly=True)
            await transaction.start()
            snapshot, lsn, now_ms = await conn.fetchrow(_CUT)
            shapes = [
                await _shape(conn, *table) for table in await conn.fetch(_TABLES, publication)
            ]
        except BaseException:
            await conn.close()
            raise
        cut = SnapshotCut.parse(snapshot, parse_lsn(lsn))
        return cls(conn, transaction, shapes), cut, int(now_ms)

    async def fetch(self, count: int) -> tuple[Shape, list[Any]] | None:
        """Up to ``count`` rows of the current table; ``None`` once every table is read."""
        while True:
            if self._cursor is None:
                if not self._pending:
                    return None
                self._shape = shape = self._pending.pop(0)
                columns = ", ".join(f"{quote(name)}::text" for name in shape.names)
                query = f"SELECT {columns} FROM {quote(shape.schema)}.{quote(shape.table)}"
                self._cursor = await self._conn.cursor(query)
            rows = await self._cursor.fetch(count)
            if rows:
                assert self._shape is not None
                return self._shape, rows
            self._cursor = None

    async def aclose(self) -> None:
        """End the snapshot's transaction and close its connection."""
        try:
            if not self._conn.is_closed():
                await self._transaction.rollback()
        finally:
            await self._conn.close()


async def _shape(conn: asyncpg.Connection, oid: int, schema: str, table: str) -> Shape:
    columns = await conn.fetch(_COLUMNS, oid)
    return Shape(
        schema,
        table,
        tuple(name for name, _, _ in columns),
        tuple(converter(type_oid) for _, type_oid, _ in columns),
        tuple(name for name, _, key in columns if key),
    )
