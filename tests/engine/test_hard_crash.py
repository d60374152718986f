"""Poison pills that kill the process without a Python exception end their own crash loop.

A supervisor loop restarts the worker (``_hard_crash_worker.py``) after every
exit, as systemd or Kubernetes would. Its step ends the process on a poison
record with ``os._exit``, ``abort()`` or SIGKILL, so no exception is ever
counted. The checkpoint's crash guard sees each unclean end, isolates the
suspect records one at a time and quarantines the record that keeps dying; the
run then finishes with every other record exactly once.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from riprap.deadletters import read_dead_letters

from ._hard_crash_worker import INPUT, MAX_CRASHES, RECORDS, TABLE
from ._subprocesses import DEADLINE, query, spawn, wait_for_child

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_hard_crash_worker.py")
MAX_STARTS = 60
"""Starts a loop may take: each pill needs about ``2 * MAX_CRASHES + 2``."""
DYING = {"exit": 3, "abort": -signal.SIGABRT, "kill": -signal.SIGKILL}
"""How a pill ends the process, and the exit code the supervisor then sees."""


def write_input(directory: Path) -> None:
    """Ids 0..RECORDS-1, one JSON object a line."""
    lines = (orjson.dumps({"id": i}) + b"\n" for i in range(RECORDS))
    (directory / INPUT).write_bytes(b"".join(lines))


def supervise(directory: Path, poison: dict[int, str], *options: str) -> list[int]:
    """Restart the worker until it exits 0; return every exit code (bounded in starts)."""
    pills = ",".join(f"{offset}={how}" for offset, how in sorted(poison.items()))
    args = [sys.executable, str(WORKER), pills, *options]
    codes: list[int] = []
    for number in range(MAX_STARTS):
        with spawn(args, directory, f"start-{number}") as proc:
            try:
                codes.append(proc.wait(timeout=DEADLINE))
            except subprocess.TimeoutExpired:
                pytest.fail(f"start {number} did not finish within {DEADLINE}s")
        if codes[-1] == 0:
            return codes
    stderr = (directory / f"start-{MAX_STARTS - 1}.err").read_text()
    pytest.fail(f"still crashing after {MAX_STARTS} starts: {codes}\n{stderr[-2000:]}")


def stored_ids(directory: Path) -> list[int]:
    """Ids in the sink table, with repeats (the table is keyed, so none are expected)."""
    return sorted(row[0] for row in query(directory / "out.db", f"SELECT id FROM {TABLE}"))


def test_records_that_kill_the_process_are_quarantined(tmp_path: Path) -> None:
    """Pills at random positions end up dead-lettered as crash_loop; every other record lands.

    One pill per way of dying in one run: the crash guard sees only that a run
    ended uncleanly, never how, so three runs of one kind each would test it thrice.
    """
    rng = random.Random("pills")
    poison = dict(zip(rng.sample(range(RECORDS), len(DYING)), DYING, strict=True))
    write_input(tmp_path)
    codes = supervise(tmp_path, poison)
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    expected_letters = sorted(poison)
    assert expected_letters == sorted(letter.offset or 0 for letter in letters)
    assert {"crash_loop"} == {letter.reason for letter in letters}
    assert all(letter.attempts >= MAX_CRASHES for letter in letters)
    assert all("without a Python exception" in letter.message for letter in letters)
    assert sorted(set(range(RECORDS)) - poison.keys()) == stored_ids(tmp_path)
    assert 0 == codes[-1]
    assert set(DYING.values()) == set(codes[:-1])


def test_pills_are_caught_when_only_the_read_bound_saves(tmp_path: Path) -> None:
    """A run after a crash watches only what the dead run may have read; later pills still end.

    No periodic checkpoint comes (an hour apart): only the read bound saves
    (with ``max_in_flight=2`` a run reads at most 200 records past its last
    saved frontier), so a pill's first crash may come long after the last
    save. The bound keeps it within what the next run watches, and every
    pill is quarantined.
    """
    poison = {30: "exit", 230: "abort", 370: "kill"}
    write_input(tmp_path)
    codes = supervise(tmp_path, poison, "0", "2", "3600")
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert sorted(poison) == sorted(letter.offset or 0 for letter in letters)
    assert {"crash_loop"} == {letter.reason for letter in letters}
    assert sorted(set(range(RECORDS)) - poison.keys()) == stored_ids(tmp_path)
    assert 0 == codes[-1]
    assert set(DYING.values()) == set(codes[:-1])


def rows(directory: Path) -> int:
    """Rows in the sink table so far (0 before it exists)."""
    database = directory / "out.db"
    if not database.exists():
        return 0
    try:
        return len(query(database, f"SELECT id FROM {TABLE}"))
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_operator_kills_never_quarantine_a_healthy_record(tmp_path: Path) -> None:
    """Twenty SIGKILLs, each once the run has written a few more records (so records are in
    flight, not Python starting up), end with every record in the sink and no dead letter."""
    rng = random.Random("operator-kills")
    write_input(tmp_path)
    args = [sys.executable, str(WORKER), "", "3"]
    for number in range(20):
        target = rows(tmp_path) + rng.randint(1, 15)
        if target >= RECORDS:
            break
        with spawn(args, tmp_path, f"killed-{number}") as proc:
            wait_for_child(lambda: rows(tmp_path) >= target, proc, f"{target} rows")  # noqa: B023
            time.sleep(rng.uniform(0, 0.01))
            proc.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == proc.wait(timeout=DEADLINE)
    codes = supervise(tmp_path, {})
    assert [0] == codes
    assert list(range(RECORDS)) == stored_ids(tmp_path)
    assert [] == list(read_dead_letters(tmp_path / "dlq.jsonl"))
