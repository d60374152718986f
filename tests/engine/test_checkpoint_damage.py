"""A store rolled back after a kill -9 stops the restart; ``riprap checkpoint reset`` repairs it.

A pipeline run by ``riprap run`` is copied mid-run (SQLite's backup API: a
consistent older copy of the database, as a backup job would take), killed
with SIGKILL further on, and its checkpoint database is then replaced by the
older copy, without the ``-wal`` the crash left. The restart must exit
non-zero with a message naming the store, both generations and the repair
command, instead of silently re-reading from the older position; after
``riprap checkpoint reset --yes`` (the operator accepts the older copy) the
run resumes from it and completes, the upsert sink holding every record once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path

import orjson
import pytest

from ._damage_worker import CHECKPOINTS, DATABASE, INPUT, PIPELINE, TABLE
from ._subprocesses import DEADLINE, checkpoint_position, count, spawn, wait_for_child

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_damage_worker.py")
RECORDS = 20_000
COPY_AT = 2_000
"""Checkpointed position at which the backup copy is taken."""
KILL_AT = 6_000
"""Checkpointed position after which the run is killed."""


def finished(tmp_path: Path, name: str, *args: str) -> tuple[int, str]:
    """Run ``python -m riprap.cli ARGS`` in ``tmp_path`` to the end: exit code and output."""
    with spawn([sys.executable, "-m", "riprap.cli", *args], tmp_path, name) as proc:
        code = proc.wait(timeout=DEADLINE)
    return code, (tmp_path / f"{name}.out").read_text() + (tmp_path / f"{name}.err").read_text()


def records_in(report: str) -> int:
    """The ``records in`` count of a run report."""
    (line,) = [line for line in report.splitlines() if line.strip().startswith("records in")]
    return int(line.split()[-1].replace(",", ""))


def position(tmp_path: Path) -> int:
    """The checkpointed position in the input file."""
    return checkpoint_position(tmp_path / CHECKPOINTS, PIPELINE, INPUT)


def backup(tmp_path: Path) -> Path:
    """A consistent copy of the live checkpoint database, as a backup job takes one."""
    copy = tmp_path / "backup.db"
    source = sqlite3.connect(tmp_path / CHECKPOINTS, timeout=DEADLINE)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return copy


def test_damaged_store_stops_the_restart_until_reset(tmp_path: Path) -> None:
    """After a kill -9 and a rollback of the store the restart fails with the generations named;
    ``riprap checkpoint reset --yes`` lets it resume from the older copy and finish.
    """
    with (tmp_path / INPUT).open("wb") as file:
        for i in range(RECORDS):
            file.write(orjson.dumps({"id": i, "n": i % 1000}) + b"\n")
    with spawn(
        [sys.executable, "-m", "riprap.cli", "run", "-q", str(WORKER)], tmp_path, "first"
    ) as proc:
        wait_for_child(lambda: position(tmp_path) >= COPY_AT, proc, f"checkpoint at {COPY_AT}")
        copy = backup(tmp_path)
        wait_for_child(lambda: position(tmp_path) >= KILL_AT, proc, f"checkpoint at {KILL_AT}")
        proc.send_signal(signal.SIGKILL)
        killed = proc.wait(timeout=DEADLINE)
    rolled_to = checkpoint_position(copy, PIPELINE, INPUT)
    os.replace(copy, tmp_path / CHECKPOINTS)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"{CHECKPOINTS}{suffix}").unlink(missing_ok=True)

    refused, refusal = finished(tmp_path, "refused", "run", "-q", str(WORKER))
    reset, _ = finished(tmp_path, "reset", "checkpoint", "reset", CHECKPOINTS, "--yes")
    resumed, report = finished(tmp_path, "resumed", "run", "-q", str(WORKER))
    expected = (
        -signal.SIGKILL,
        True,
        1,
        True,
        True,
        True,
        0,
        0,
        RECORDS - rolled_to,
        RECORDS,
        RECORDS,
    )
    assert expected == (
        killed,
        COPY_AT <= rolled_to < KILL_AT,
        refused,
        f"{CHECKPOINTS} (pipeline '{PIPELINE}')" in refusal and "rolled back" in refusal,
        "expected generation" in refusal and "found generation" in refusal,
        f"riprap checkpoint reset {CHECKPOINTS} --pipeline {PIPELINE} --yes" in refusal,
        reset,
        resumed,
        records_in(report),
        position(tmp_path),
        count(tmp_path / DATABASE, f"SELECT count(*) FROM {TABLE}"),
    ), refusal
