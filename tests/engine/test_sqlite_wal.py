"""SQLite stores opened by several connections at once: nobody sees "database is locked".

SQLite refuses a journal-mode change that meets another connection's lock at
once, without waiting on its busy timeout; the workers of one pipeline open
the same new checkpoint store, output table and dead-letter store together.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.sqlite import SqliteSink
from riprap.deadletters import SqliteDeadLetters
from riprap.lowlevel import use_wal

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from pathlib import Path

ROUNDS = 200
"""New databases opened by ``OPENERS`` threads together (each round ~5 ms)."""
OPENERS = 3


def test_openers_of_a_new_database_all_get_wal(tmp_path: Path) -> None:
    """Three connections switching one new database to WAL together all succeed, every round."""
    failures: list[str] = []
    modes: list[str] = []

    def open_wal(path: Path, start: threading.Barrier) -> None:
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            start.wait()
            use_wal(db, 5.0)
            modes.append(db.execute("PRAGMA journal_mode").fetchone()[0])
        except sqlite3.Error as exc:
            failures.append(str(exc))
        finally:
            db.close()

    for n in range(ROUNDS):
        start = threading.Barrier(OPENERS)
        threads = [
            threading.Thread(target=open_wal, args=(tmp_path / f"{n}.db", start))
            for _ in range(OPENERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert ([], ["wal"] * ROUNDS * OPENERS) == (failures, modes)


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["checkpoints", "sink", "dead letters"])
async def test_stores_open_a_new_database_together(tmp_path: Path, store: str) -> None:
    """Three instances of a store opening one new database at once all open it."""

    def opener(path: Path) -> Callable[[], Coroutine[object, object, object]]:
        if store == "checkpoints":
            return lambda: SqliteCheckpoints(path).load("orders")
        if store == "sink":
            return SqliteSink(path, "orders").open
        return SqliteDeadLetters(path).open

    for n in range(ROUNDS // 4):
        opens = [opener(tmp_path / f"{n}.db") for _ in range(OPENERS)]
        async with anyio.create_task_group() as tg:
            for open_ in opens:
                tg.start_soon(open_)
        with sqlite3.connect(tmp_path / f"{n}.db") as db:
            assert "wal" == db.execute("PRAGMA journal_mode").fetchone()[0]


class _Lock:
    """Another connection's exclusive lock on ``path``, released after ``holds`` waits."""

    def __init__(self, path: Path, holds: int) -> None:
        self.owner = sqlite3.connect(path, isolation_level=None)
        self.owner.execute("BEGIN EXCLUSIVE")
        self.holds = holds
        self.waits: list[float] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        if len(self.waits) == self.holds:
            self.owner.execute("ROLLBACK")


def test_waits_out_a_lock_with_growing_waits(tmp_path: Path) -> None:
    """A lock held for a while delays the switch (waits doubling from 1 ms); then WAL holds."""
    lock = _Lock(tmp_path / "db", holds=8)
    db = sqlite3.connect(tmp_path / "db", timeout=0, isolation_level=None)
    use_wal(db, 1.0, clock=lock.clock, sleep=lock.sleep)
    assert "wal" == db.execute("PRAGMA journal_mode").fetchone()[0]
    assert [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05] == lock.waits


def test_gives_up_when_the_lock_outlasts_the_timeout(tmp_path: Path) -> None:
    """A lock never released: "database is locked" once ``timeout`` seconds have passed."""
    lock = _Lock(tmp_path / "db", holds=-1)
    db = sqlite3.connect(tmp_path / "db", timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        use_wal(db, 0.5, clock=lock.clock, sleep=lock.sleep)
    assert 0.5 == pytest.approx(lock.now)
    assert 0.05 == max(lock.waits)


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    """A database that cannot take a log (read-only) fails at once, with SQLite's reason."""
    path = tmp_path / "db"
    sqlite3.connect(path).execute("CREATE TABLE t (a)").connection.close()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0, isolation_level=None)
    lock = _Lock(tmp_path / "other", holds=-1)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        use_wal(db, 1.0, clock=lock.clock, sleep=lock.sleep)
    assert [] == lock.waits
