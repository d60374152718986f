"""Merged sources under SIGKILL: two files read at once, no record lost, the upsert exact.

The worker (``_merged_worker.py``) reads two JSON Lines files at once into one
pipeline that writes an SQLite upsert and an append-only log. Every kill lands
at a seeded random moment while the worker makes progress; after each one no
file's checkpointed position has gone backwards, and each covers only records
both sinks hold (I1, per source). The last run finishes: the table then holds
every record of both files exactly once (I2), the log each at least once.
"""

from __future__ import annotations

import random
import signal
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from ._merged_worker import INPUTS, LOG, PIPELINE, TABLE, partition
from ._subprocesses import DEADLINE, checkpoint_position, count, query, spawn, wait_for_child

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_merged_worker.py")
RECORDS = {"a": 3_000, "b": 2_000}
"""Records per file; ids of ``b`` follow those of ``a``."""
FIRST_ID = {"a": 0, "b": RECORDS["a"]}
KILLS = 6
SEED = 2028


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


def positions(directory: Path) -> dict[str, int]:
    """The checkpointed position in each file, by source name."""
    db = directory / "checkpoints.db"
    return {name: checkpoint_position(db, PIPELINE, partition(name)) for name in INPUTS}


def rows_between(directory: Path, low: int, high: int) -> int:
    """Rows in the table with ``low <= id < high``."""
    sql = f"SELECT count(*) FROM {TABLE} WHERE id >= ? AND id < ?"
    return count(directory / "out.db", sql, low, high)


def kill_while_running(directory: Path, run: int, rng: random.Random) -> None:
    """Start a run, wait for a seeded random amount of new progress, then SIGKILL it."""
    before = sum(positions(directory).values())
    room = (sum(RECORDS.values()) - before) // (KILLS - run + 2)
    target = before + rng.randint(1, max(1, min(600, room)))
    with spawn([sys.executable, str(WORKER)], directory, f"run-{run}") as proc:
        wait_for_child(
            lambda: sum(positions(directory).values()) >= target, proc, f"progress to {target}"
        )
        proc.kill()
        proc.wait(timeout=DEADLINE)
    assert -signal.SIGKILL == proc.returncode, f"run {run} ended before it could be killed"


def check_done_prefixes(directory: Path) -> None:
    """Everything before each file's position is in both sinks."""
    current = positions(directory)
    seen = set(logged(directory))
    for name, position in current.items():
        first = FIRST_ID[name]
        assert position == rows_between(directory, first, first + position), name
        assert set(range(first, first + position)) <= seen, name


def test_sigkill_while_merging_two_files_loses_nothing(tmp_path: Path) -> None:
    """Kills never let either file's checkpoint pass a record a sink lacks; the end is exact."""
    for name, path in INPUTS.items():
        ids = range(FIRST_ID[name], FIRST_ID[name] + RECORDS[name])
        lines = (orjson.dumps({"id": i, "source": name}) + b"\n" for i in ids)
        (tmp_path / path).write_bytes(b"".join(lines))
    rng = random.Random(SEED)
    history: list[dict[str, int]] = []
    for run in range(KILLS):
        kill_while_running(tmp_path, run, rng)
        current = positions(tmp_path)
        if history:
            assert all(current[n] >= history[-1][n] for n in INPUTS), f"backwards: {history}"
        history.append(current)
        check_done_prefixes(tmp_path)
    # Both files moved while the kills landed: they were read at once, not one after the other.
    assert all(history[-1][name] > 0 for name in INPUTS), history

    with spawn([sys.executable, str(WORKER)], tmp_path, "last") as proc:
        returncode = proc.wait(timeout=DEADLINE)
    assert 0 == returncode, (tmp_path / "last.err").read_text()
    summary = orjson.loads((tmp_path / "last.out").read_bytes())
    expected_positions = {partition(name): RECORDS[name] for name in INPUTS}
    assert ("completed", expected_positions) == (summary["outcome"], summary["positions"])
    total = sum(RECORDS.values())
    stored = query(tmp_path / "out.db", f"SELECT id, value FROM {TABLE}")
    assert total == len(stored)  # one row per id: exactly once
    assert {i: "a" if i < RECORDS["a"] else "b" for i in range(total)} == {
        key: orjson.loads(value)["source"] for key, value in stored
    }
    assert set(range(total)) == set(logged(tmp_path))  # at least once
