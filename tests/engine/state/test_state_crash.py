"""Keyed state survives kill -9: a running count killed mid-run and restarted ends exact.

The worker (``_count_worker.py``) counts records per key and upserts each
record's count by record number. It is killed with SIGKILL at five points of
its progress, each restart resuming from the checkpoint, and then runs to the
end. Every record's count must equal the one a run that never crashed gives:
a change counted twice (a record replayed on top of state that already holds
it) or lost shows as a wrong number.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .._subprocesses import DEADLINE, count, query, spawn, wait_for_child
from ._count_worker import RECORDS, TABLE, expected

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_count_worker.py")
KILLS = 5
WORK_MICROSECONDS = "300"


def rows(directory: Path) -> int:
    return count(directory / "out.db", f"SELECT COUNT(*) FROM {TABLE}")


def kill_five_times_then_finish(tmp_path: Path, args: list[str], marks: list[int]) -> None:
    """Kill the worker with SIGKILL once ``out.db`` has each mark's rows, then run it to the end."""
    for number, mark in enumerate(marks):
        with spawn(args, tmp_path, f"run-{number}") as proc:
            wait_for_child(lambda: rows(tmp_path) >= mark, proc, f"{mark} rows written")  # noqa: B023
            proc.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == proc.wait(timeout=DEADLINE)
    with spawn(args, tmp_path, "last") as proc:
        try:
            code = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the last run did not finish within {DEADLINE}s")
    assert 0 == code, (tmp_path / "last.err").read_text()[-2000:]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_running_count_killed_five_times_ends_as_without_crash(
    tmp_path: Path, store: str
) -> None:
    """Five SIGKILLs at random points, five restarts: every record's count is exact."""
    args = [sys.executable, str(WORKER), store, WORK_MICROSECONDS]
    rng = random.Random(f"kill-9-{store}")
    marks = sorted(rng.sample(range(RECORDS // 10, RECORDS * 8 // 10), KILLS))
    kill_five_times_then_finish(tmp_path, args, marks)
    found = dict(query(tmp_path / "out.db", f"SELECT number, n FROM {TABLE}"))
    assert expected() == found


@pytest.mark.parametrize(("store", "how"), [("memory", "dedupe"), ("sqlite", "Dedupe")])
def test_a_keyed_dedupe_killed_five_times_keeps_the_first_of_each_id(
    tmp_path: Path, store: str, how: str
) -> None:
    """A keyed dedupe (a filter with keyed state, or the ``Dedupe`` stage on a store), killed
    five times: exactly the first record of each id."""
    args = [sys.executable, str(WORKER), store, WORK_MICROSECONDS, how]
    rng = random.Random(f"kill-9-dedupe-{store}")
    marks = sorted(rng.sample(range(RECORDS // 30, RECORDS * 8 // 30), KILLS))
    kill_five_times_then_finish(tmp_path, args, marks)
    found = query(tmp_path / "out.db", f"SELECT number FROM {TABLE} ORDER BY number")
    assert list(range(0, RECORDS, 3)) == [number for (number,) in found]
