"""benchmarks/w6_postgres.py runs, and both upsert sides leave the same table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from benchmarks import w6_postgres

if TYPE_CHECKING:
    from .conftest import PgHelper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_both_sides_upsert_the_same_rows_and_cdc_reads_every_insert(pg: PgHelper) -> None:
    """The loop and riprap write equal tables; the CDC run hands over every insert."""
    records = w6_postgres.make_records(2_000)
    await pg.execute(w6_postgres.TABLE)
    tables = []
    for run in (w6_postgres.raw_loop, w6_postgres.riprap_sink):
        await pg.execute("TRUNCATE target")
        assert await run(pg.dsn, records, 300) > 0
        tables.append([tuple(row) for row in await pg.fetch("SELECT * FROM target ORDER BY id")])
    assert 1_000 == len(tables[0])
    assert tables[0] == tables[1]
    assert await w6_postgres.cdc(pg.dsn, 3_000) > 0
