"""Kill -9 a PostgreSQL -> PostgreSQL CDC pipeline again and again while writers run."""

from __future__ import annotations

import random
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest

from tests.engine._subprocesses import load_checkpoint, spawn, wait_for_child

from ._writer import ITEMS, eventually, start_writers

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import PgHelper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.slow]

WORKER = Path(__file__).with_name("_pg_worker.py")
KILLS = 10
SNAPSHOT_KILLS = 3
STREAMING = 1 << 32
"""Positions from here on are in the change stream (below: the initial snapshot)."""
PARTITION = "slot:crash"


def position(database: Path) -> int:
    """The slot position the last checkpoint holds (0 before the first)."""
    checkpoint = load_checkpoint(database, "pg-crash")
    return checkpoint.positions.get(PARTITION, 0) if checkpoint is not None else 0


def crash_again_and_again(args: list[str], workdir: Path, database: Path) -> list[int]:
    """Kill the worker at random moments once its checkpoint has moved on, ``KILLS`` times.

    The first kills land during the initial snapshot (each restart takes it
    again); the rest once the checkpoint is in the change stream.
    """
    rng = random.Random(7)
    seen = [0]
    for attempt in range(KILLS):
        with spawn(args, workdir, f"run{attempt}") as proc:
            least = seen[-1] + 1 if attempt < SNAPSHOT_KILLS else max(seen[-1] + 1, STREAMING)
            wait_for_child(lambda: position(database) >= least, proc, "a checkpoint that moved")  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        now = position(database)
        assert now >= seen[-1], "a checkpoint went backwards"
        seen.append(now)
    return seen


def check_audit(audit: list[Any], source: dict[int, int]) -> None:
    """Every change reached the pipeline: versions without gaps, every delete, every live row."""
    versions: dict[int, set[int]] = defaultdict(set)
    deleted: set[int] = set()
    for key, version, op in audit:
        if op == "d":
            deleted.add(key)
        else:
            versions[key].add(version)
    for key, seen in versions.items():
        assert set(range(min(seen), max(seen) + 1)) == seen, f"a lost update of {key}"
        if key in source:
            assert source[key] == max(seen), f"the last update of {key} is lost"
        else:
            assert key in deleted, f"the delete of {key} is lost"
    assert set(source) <= set(versions), "a lost insert"


async def test_kill_9_ten_times_loses_no_change(
    pg: PgHelper, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Ten SIGKILLs mid-stream while writers run: the copy equals the source, no change lost."""
    await pg.execute(
        ITEMS.format("items"),
        ITEMS.format("items_copy"),
        "CREATE TABLE audit (id int, version int, op text, PRIMARY KEY (id, version, op))",
        "CREATE PUBLICATION pub FOR TABLE items",
        "INSERT INTO items SELECT i, 'x', 0 FROM generate_series(0, 1999) i",
    )
    database = tmp_path / "checkpoints.db"
    args = [sys.executable, str(WORKER), pg.dsn, str(database)]
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        await start_writers(pg.dsn, stop, tg, 2_000, pause=0.005)
        seen = await anyio.to_thread.run_sync(crash_again_and_again, args, tmp_path, database)
        stop.set()
    final: dict[str, Any] = {}

    async def converged() -> bool:
        source = await pg.fetch("SELECT id, version, name, doc FROM items ORDER BY id")
        target = await pg.fetch("SELECT id, version, name, doc FROM items_copy ORDER BY id")
        final["source"] = {row["id"]: row["version"] for row in source if row["id"] >= 0}
        return [tuple(r) for r in source] == [tuple(r) for r in target]

    # The last change: once the copy has it, it has every change before it (commit order).
    await pg.execute("INSERT INTO items VALUES (-1, 'last', 0)")
    with spawn(args, tmp_path, "final") as proc:
        await eventually(converged, within=60)
        proc.send_signal(signal.SIGTERM)
        assert 0 == await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60))
    audit = await pg.fetch("SELECT id, version, op FROM audit WHERE id >= 0")
    check_audit(audit, final["source"])
    assert KILLS == len(seen) - 1
    record_property("kills", len(seen) - 1)
