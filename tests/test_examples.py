"""The examples work as their docstrings say."""

from __future__ import annotations

import dataclasses
import shlex
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.sqlite import read_table
from tests._examples import EXAMPLES, load_example
from tests._snippets import ROOT, section_blocks

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


def run_in(cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """A command run in ``cwd``; ``riprap`` is the CLI of this interpreter."""
    argv = [sys.executable, "-m", "riprap.cli", *command[1:]] if command[0] == "riprap" else command
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=DEADLINE, check=False
    )


def order_ids(database: Path) -> list[int]:
    """The ids in the example's ``orders`` table, sorted."""
    with sqlite3.connect(database) as db:
        return sorted(int(key) for (key,) in db.execute('SELECT "id" FROM "orders"'))


def readme_commands(section: str) -> list[list[str]]:
    """The shell commands of the README's bash blocks under ``section``, comments removed."""
    return [
        shlex.split(line, comments=True)
        for block in section_blocks(ROOT / "README.md", section)
        if block.info[:1] == ("bash",)
        for line in block.code.splitlines()
        if line.strip()
    ]


def test_orders_example_runs_from_another_directory_and_resumes(tmp_path: Path) -> None:
    """The README's first pipeline, run in an empty directory: orders in, bad lines dead letters."""
    first = run_in(tmp_path, sys.executable, str(EXAMPLES / "orders.py"))
    assert first.returncode == 0, first.stderr
    work = tmp_path / "orders-example"
    # Every 100th line is cut short and every 100th order has a text amount.
    bad = {i for i in range(1_000) if i % 100 in (50, 99)}
    assert [i for i in range(1_000) if i not in bad] == order_ids(work / "out" / "orders.db")
    letters = list(riprap.deadletters.read_dead_letters(work / "dead-letters.jsonl"))
    by_reason = Counter((letter.stage, letter.reason) for letter in letters)
    expected = {("parse", "decode_error"): 10, ("validate", "validation"): 10}
    assert expected == dict(by_reason)
    assert sorted(bad) == sorted(letter.offset or 0 for letter in letters)

    second = run_in(tmp_path, sys.executable, str(EXAMPLES / "orders.py"))
    assert second.returncode == 0, second.stderr
    assert "records in                 0" in second.stdout
    assert len(letters) == len(
        list(riprap.deadletters.read_dead_letters(work / "dead-letters.jsonl"))
    )


def test_readme_dead_letter_walk_through(tmp_path: Path) -> None:
    """Inspect, fix, replay, as the README says: the text amounts reach the table, once."""
    section = "When records fail: inspect, fix, replay"
    assert run_in(tmp_path, sys.executable, str(EXAMPLES / "orders.py")).returncode == 0
    (inspect_command,) = readme_commands(section)[:1]
    inspected = run_in(tmp_path, *inspect_command)
    assert inspected.returncode == 0, inspected.stderr
    assert "20 dead letters" in inspected.stdout

    # The fix: the README's Python line, added after the parse step in a copy.
    (fix,) = [b.code for b in section_blocks(ROOT / "README.md", section) if b.info == ("python",)]
    parse = '    .map("parse", parse_json_line)  # a malformed line is a dead letter, not a crash\n'
    example = (EXAMPLES / "orders.py").read_text()
    assert parse in example
    (tmp_path / "fixed.py").write_text(example.replace(parse, parse + fix))

    replay_commands = readme_commands(section)[1:]
    assert [command[:3] for command in replay_commands] == [["riprap", "dlq", "replay"]]
    database = tmp_path / "orders-example" / "out" / "orders.db"
    for _ in range(2):  # running the replay twice sends nothing twice
        replayed = run_in(tmp_path, *replay_commands[0])
        assert replayed.returncode == 0, replayed.stderr
        cut_short = [i for i in range(1_000) if i % 100 != 99]
        assert cut_short == order_ids(database)
    # The report goes to stderr, with the progress line.
    assert "records in                 0" in replayed.stdout + replayed.stderr
