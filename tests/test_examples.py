"""The examples work as their docstrings say."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer

import riprap
import riprap.checkpoints
from riprap.connectors.sqlite import read_table
from tests._examples import load_example

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

    from aiohttp import web

DEADLINE = 60.0


@pytest.fixture
def aiohttp_service() -> Iterator[ModuleType]:
    """The ``examples/aiohttp_service.py`` module, imported from its file for one test."""
    module = load_example("aiohttp_service.py")
    yield module
    del sys.modules[module.__name__]


async def get_stats(client: TestClient[web.Request, web.Application]) -> dict[str, Any]:
    """``GET /stats``, checked for status."""
    response = await client.get("/stats")
    expected = 200
    assert expected == response.status
    stats: dict[str, Any] = await response.json()
    return stats


async def load_checkpoint(path: Path, pipeline: str) -> riprap.checkpoints.Checkpoint | None:
    """The latest checkpoint in an SQLite store, read as a restart would."""
    backend = riprap.checkpoints.SqliteCheckpoints(path)
    try:
        return await backend.load(pipeline)
    finally:
        await backend.aclose()


@pytest.mark.anyio
@pytest.mark.network
async def test_aiohttp_service(aiohttp_service: ModuleType, tmp_path: Path) -> None:
    """The service runs its pipeline while serving /stats and /checkpoint and stops it cleanly."""
    # Periodic checkpoints are an hour apart: only POST /checkpoint and shutdown write one.
    pipeline = aiohttp_service.build_pipeline(tmp_path, rate=2_000.0, checkpoint_interval=3600.0)
    app: web.Application = aiohttp_service.create_app(pipeline)
    checkpoints = tmp_path / "checkpoints.db"
    with anyio.fail_after(DEADLINE):
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            for _ in range(int(DEADLINE / 0.02)):
                stats = await get_stats(client)
                if stats["records_out"] >= 200:
                    break
                await anyio.sleep(0.02)
            # Every field of riprap.RunStatistics is served.
            expected_keys = {field.name for field in dataclasses.fields(riprap.RunStatistics)}
            assert expected_keys == set(stats)
            assert stats["records_out"] >= 200
            assert stats["positions"]["sensors"] >= 200
            before = await load_checkpoint(checkpoints, "sensors")

            response = await client.post("/checkpoint")
            expected_status = 200
            assert expected_status == response.status
            body = await response.json()
            saved = await load_checkpoint(checkpoints, "sensors")
            assert saved is not None
            assert before is None or saved.seq > before.seq
            # Taken after the stats above were read, so it covers at least as much.
            assert saved.positions["sensors"] >= stats["positions"]["sensors"]
            assert body["positions"]["sensors"] >= saved.positions["sensors"]
            expected_count = stats["checkpoints"] + 1
            assert expected_count == body["checkpoints"]

    (report,) = app[aiohttp_service.REPORTS]
    final = await load_checkpoint(checkpoints, "sensors")
    assert final is not None
    position = final.positions["sensors"]
    # Stopped with the app: drained, flushed, and a final checkpoint covering every record.
    expected_report = ("stopped", position, position, expected_count + 1, {"sensors": position})
    actual_report = (
        report.outcome,
        report.records_in,
        report.records_out,
        report.checkpoints,
        dict(report.positions),
    )
    assert expected_report == actual_report
    rows = await read_table(tmp_path / "readings.db", "readings")
    assert list(range(position)) == list(rows)
    expected_row = {"id": 7, "sensor": "sensor-3", "celsius": 20.35, "fahrenheit": 68.63}
    assert expected_row == rows[7]


def test_keyed_ordering_example_keeps_balances_right(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-key ordering example applies every account's events in order."""
    import runpy

    example = Path(__file__).parent.parent / "examples" / "keyed_ordering.py"
    runpy.run_path(str(example), run_name="__main__")
    assert "balances correct: True" in capsys.readouterr().out
