"""Dead letters written again after a kill -9 (JSON Lines, SQLite): stored or shown once.

The failing pipeline runs in a child process that checkpoints only at its end;
it is SIGKILLed after writing some dead letters and run again, so it writes
those letters a second time. Every reader then shows each letter once, inspect
says how many repeats it folded, and replays send each failed record once,
also when a replay is stopped and resumed.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from riprap.deadletters import read_dead_letters

from ._crashed import KILL_AFTER, check_replay_of_crashed_store, crash_then_finish, inspected
from ._replay import FAILED, check_stopped_replay_resumes, with_fix

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


def stored_copies(path: Path) -> int:
    """The letters physically in the store: SQLite rows or JSON Lines lines."""
    if path.suffix != ".db":
        return path.read_bytes().count(b"\n")
    with sqlite3.connect(path) as db:
        (rows,) = db.execute("SELECT count(*) FROM riprap_dead_letters").fetchone()
    db.close()
    assert isinstance(rows, int)
    return rows


def test_jsonl_keeps_repeats_that_every_reader_folds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON Lines holds the killed run's letters twice; inspect, read and replay count them once."""
    path = tmp_path / "dlq.jsonl"
    killed_run_wrote = crash_then_finish(str(path), tmp_path)
    repeats = stored_copies(path) - len(FAILED)
    assert (True, (len(FAILED), repeats)) == (
        repeats >= killed_run_wrote >= KILL_AFTER,
        inspected([str(path)], capsys),
    )
    assert len(FAILED) == len(list(read_dead_letters(path)))
    check_replay_of_crashed_store([str(path)], tmp_path / "replay", repeats)
    resume = tmp_path / "resume"
    resume.mkdir()
    check_stopped_replay_resumes([str(path)], with_fix(resume))


def test_sqlite_stores_each_letter_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite ignores the rerun's second copies: one row per letter, nothing left to fold."""
    path = tmp_path / "dlq.db"
    crash_then_finish(str(path), tmp_path)
    assert (len(FAILED), (len(FAILED), 0)) == (stored_copies(path), inspected([str(path)], capsys))
    check_replay_of_crashed_store([str(path)], tmp_path / "replay", 0)
