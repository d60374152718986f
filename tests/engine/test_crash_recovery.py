"""Crash recovery: SIGKILL a running pipeline again and again, restart it, check the effect.

The worker (``_crash_worker.py``) runs JSON Lines -> transform -> SQLite
upsert with SQLite checkpoints. Every kill lands at a seeded random moment
while the worker is making progress; after each one the checkpoint must not
have gone backwards and must cover only rows the sink holds (I1). The last run
finishes, and the table must then hold every record exactly once with its
transformed value (I2: the upsert turns replays into an exactly-once effect).
"""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from ._crash_worker import PIPELINE, TABLE
from ._subprocesses import DEADLINE, checkpoint_position, count, query, spawn, wait_for_child

if TYPE_CHECKING:
    import subprocess
    from contextlib import AbstractContextManager

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_crash_worker.py")
INPUT = "input.jsonl"
"""The input file, relative to the worker's directory; also its partition name."""
RECORDS = 12_000
"""Enough that the last of the kills, each at most 800 rows on, still lands mid-run."""
KILLS = 12
SEED = 1729


def write_input(path: Path) -> dict[int, dict[str, Any]]:
    """Write the input file; return the rows the sink must end up with, by id."""
    expected: dict[int, dict[str, Any]] = {}
    with path.open("wb") as file:
        for i in range(RECORDS):
            value = {"id": i, "n": (i * 7919) % 1000 - 500}
            file.write(orjson.dumps(value) + b"\n")
            expected[i] = {**value, "square": value["n"] ** 2}
    return expected


def rows(tmp_path: Path, below: int = RECORDS) -> int:
    """Rows in the sink table with an id below ``below``."""
    return count(tmp_path / "out.db", f"SELECT count(*) FROM {TABLE} WHERE id < ?", below)


def position(tmp_path: Path) -> int:
    """The checkpointed position in the input file."""
    return checkpoint_position(tmp_path / "checkpoints.db", PIPELINE, INPUT)


def run_worker(tmp_path: Path, run: int) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """Start run number ``run`` of the worker; leaving the block kills it if still running."""
    args = [sys.executable, str(WORKER), INPUT, "checkpoints.db", "out.db"]
    return spawn(args, tmp_path, f"run-{run}")


def kill_while_running(tmp_path: Path, run: int, rng: random.Random) -> None:
    """Start a run, wait for a seeded random amount of new progress, then SIGKILL it."""
    rows_before = rows(tmp_path)
    position_before = position(tmp_path)
    # Leave room so that even the last kill lands before the input runs out.
    room = (RECORDS - rows_before) // (KILLS - run + 2)
    step = rng.randint(1, max(1, min(800, room)))
    by_rows = rng.random() < 0.5
    delay = rng.uniform(0, 0.02)
    with run_worker(tmp_path, run) as proc:
        if by_rows:
            target = rows_before + step
            wait_for_child(lambda: rows(tmp_path) >= target, proc, f"{target} sink rows")
            time.sleep(delay)  # land anywhere in a batch or a checkpoint save
        else:
            # Kill at once: just after a save is when a checkpoint that ran ahead
            # of the sink (an I1 violation) would be caught.
            target = position_before + step
            wait_for_child(lambda: position(tmp_path) >= target, proc, f"checkpoint at {target}")
        proc.kill()
        proc.wait(timeout=DEADLINE)
    expected = -signal.SIGKILL
    assert expected == proc.returncode, f"run {run} ended before it could be killed"


def test_sigkill_and_restart_loses_nothing(tmp_path: Path) -> None:
    """SIGKILLs at random moments never move the checkpoint back or past unwritten rows,
    and after the last run the table holds every record exactly once, transformed.
    """
    expected_rows = write_input(tmp_path / INPUT)
    rng = random.Random(SEED)
    last = 0
    history: list[int] = []
    for run in range(KILLS):
        kill_while_running(tmp_path, run, rng)
        current = position(tmp_path)
        history.append(current)
        assert current >= last, f"the checkpoint went backwards: {history}"
        # I1: every record before the checkpointed position is in the sink.
        assert current == rows(tmp_path, below=current)
        last = current

    with run_worker(tmp_path, KILLS) as proc:
        returncode = proc.wait(timeout=DEADLINE)
    expected_code = 0
    assert expected_code == returncode, (tmp_path / f"run-{KILLS}.err").read_text()
    summary = orjson.loads((tmp_path / f"run-{KILLS}.out").read_bytes())
    # The last run resumed from the last checkpoint instead of starting over.
    expected_summary = {
        "outcome": "completed",
        "records_in": RECORDS - last,
        "records_out": RECORDS - last,
        "positions": {INPUT: RECORDS},
    }
    assert expected_summary == summary

    database = tmp_path / "out.db"
    expected_counts = (RECORDS, RECORDS)
    assert expected_counts == (position(tmp_path), count(database, f"SELECT count(*) FROM {TABLE}"))
    stored = query(database, f"SELECT id, value FROM {TABLE}")
    assert expected_rows == {key: orjson.loads(value) for key, value in stored}
