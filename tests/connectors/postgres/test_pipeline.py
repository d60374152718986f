"""PostgreSQL -> riprap -> PostgreSQL: change data capture applied by the upsert sink."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import riprap
import riprap.checkpoints
from riprap.connectors.postgres import PostgresCDCSource, PostgresSink

from ._writer import ITEMS, eventually, start_writers

if TYPE_CHECKING:
    from .conftest import PgHelper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

COLUMNS = "SELECT id, name, version, doc FROM {} ORDER BY id"


def replication(pg: PgHelper, name: str = "pg-copy") -> riprap.Pipeline:
    """Changes of ``items`` applied to ``items_copy``, checkpointed every 0.1 s."""
    source = PostgresCDCSource(pg.dsn, slot="copy", publication="pub", poll_interval=0.01)
    return (
        riprap.Pipeline(
            name,
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            checkpoint_interval=0.1,
            batch_size=500,
        )
        .source(source)
        .sink(PostgresSink(pg.dsn, "items_copy", cdc=True))
    )


async def tables(pg: PgHelper) -> tuple[list[Any], list[Any]]:
    source = [tuple(row) for row in await pg.fetch(COLUMNS.format("items"))]
    target = [tuple(row) for row in await pg.fetch(COLUMNS.format("items_copy"))]
    return source, target


async def test_the_copy_converges_while_writers_run(pg: PgHelper) -> None:
    """Snapshot plus changes under concurrent writers: the copy ends equal to the source."""
    await pg.execute(
        ITEMS.format("items"),
        ITEMS.format("items_copy"),
        "CREATE PUBLICATION pub FOR TABLE items",
        "INSERT INTO items SELECT i, 'x', 0, '{\"n\": 1}' FROM generate_series(0, 999) i",
    )
    stop = anyio.Event()
    source: list[Any] = []

    async def changed() -> bool:
        rows = await pg.fetch("SELECT count(*) FROM items_copy WHERE version > 0")
        return bool(rows[0][0] >= 300)

    async def converged() -> bool:
        nonlocal source
        source, target = await tables(pg)
        return source == target

    async with replication(pg).open() as running:
        async with anyio.create_task_group() as tg:
            await start_writers(pg.dsn, stop, tg, 1_000)
            await eventually(changed)
            stop.set()
        await eventually(converged)
        running.stop()
    assert len(source) > 1_000
