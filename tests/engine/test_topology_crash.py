"""Fan-out under SIGKILL: every sink gets every record at least once, the idempotent one once.

The worker (``_fan_out_worker.py``) fans each record out to an SQLite upsert
and to an append-only JSON Lines log. Every kill lands at a seeded random
moment while the worker makes progress; after each one the checkpoint must
not have gone backwards and must cover only records *both* sinks hold (I1
across branches). The last run finishes: the table then holds every record
exactly once (I2), the log every record at least once.
"""

from __future__ import annotations

import random
import signal
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from ._fan_out_worker import INPUT, LOG, PIPELINE, TABLE
from ._subprocesses import DEADLINE, checkpoint_position, count, query, spawn, wait_for_child

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_fan_out_worker.py")
RECORDS = 6_000
KILLS = 6
SEED = 2027


def logged(directory: Path) -> Counter[int]:
    """How often each id is in the log; a line cut short by the kill is not a record."""
    path = directory / LOG
    if not path.exists():
        return Counter()
    ids: Counter[int] = Counter()
    for line in path.read_bytes().splitlines():
        try:
            ids[orjson.loads(line)["id"]] += 1
        except orjson.JSONDecodeError:
            continue
    return ids


def position(directory: Path) -> int:
    """The checkpointed position in the input file."""
    return checkpoint_position(directory / "checkpoints.db", PIPELINE, INPUT)


def rows(directory: Path, below: int = RECORDS) -> int:
    """Rows in the table with an id below ``below``."""
    return count(directory / "out.db", f"SELECT count(*) FROM {TABLE} WHERE id < ?", below)


def kill_while_running(directory: Path, run: int, rng: random.Random) -> None:
    """Start a run, wait for a seeded random amount of new progress, then SIGKILL it."""
    before = position(directory)
    room = (RECORDS - before) // (KILLS - run + 2)
    target = before + rng.randint(1, max(1, min(600, room)))
    args = [sys.executable, str(WORKER)]
    with spawn(args, directory, f"run-{run}") as proc:
        wait_for_child(lambda: position(directory) >= target, proc, f"checkpoint at {target}")
        proc.kill()
        proc.wait(timeout=DEADLINE)
    assert -signal.SIGKILL == proc.returncode, f"run {run} ended before it could be killed"


def test_sigkill_during_a_fan_out_loses_nothing_in_either_sink(tmp_path: Path) -> None:
    """Kills never let the checkpoint pass a record either sink lacks; the end state is exact."""
    lines = (orjson.dumps({"id": i, "n": i * 3}) + b"\n" for i in range(RECORDS))
    (tmp_path / INPUT).write_bytes(b"".join(lines))
    rng = random.Random(SEED)
    history: list[int] = []
    for run in range(KILLS):
        kill_while_running(tmp_path, run, rng)
        current = position(tmp_path)
        assert current >= (history[-1] if history else 0), f"went backwards: {history}"
        history.append(current)
        # I1 across branches: everything before the position is in both sinks.
        assert current == rows(tmp_path, below=current)
        assert set(range(current)) <= set(logged(tmp_path))

    with spawn([sys.executable, str(WORKER)], tmp_path, "last") as proc:
        returncode = proc.wait(timeout=DEADLINE)
    assert 0 == returncode, (tmp_path / "last.err").read_text()
    summary = orjson.loads((tmp_path / "last.out").read_bytes())
    assert ("completed", {INPUT: RECORDS}) == (summary["outcome"], summary["positions"])
    stored = query(tmp_path / "out.db", f"SELECT id, value FROM {TABLE}")
    assert {i: {"id": i, "n": i * 3} for i in range(RECORDS)} == {
        key: orjson.loads(value) for key, value in stored
    }
    # At least once: every id is logged; the kills' replays may have logged some twice.
    assert set(range(RECORDS)) == set(logged(tmp_path))
