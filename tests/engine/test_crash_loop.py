"""Poison-pill quarantine across real process restarts.

A supervisor loop restarts the worker (``_crash_loop_worker.py``) whenever it
exits non-zero, as systemd or Kubernetes would. The worker's transform has a
bug that crashes on one record. Each crash is counted in the checkpoint; after
``max_crashes`` crashes the next start dead-letters the record with reason
``crash_loop`` and the run completes, so the crash loop ends by itself and
every other record reaches the sink exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import riprap
import riprap.deadletters

from ._crash_loop_worker import MAX_CRASHES, PIPELINE, POISON, STAGE, TABLE
from ._subprocesses import DEADLINE, count, load_checkpoint, query, spawn

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_crash_loop_worker.py")
INPUT = "input.jsonl"
"""The input file, relative to the worker's directory; also its partition name."""
RECORDS = 300
MAX_STARTS = 10


def write_input(path: Path) -> list[bytes]:
    """Write the input file; return its lines (without line endings)."""
    lines = [orjson.dumps({"id": i, "n": (i * 37) % 101}) for i in range(RECORDS)]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


def start(tmp_path: Path, number: int) -> int:
    """Run the worker once (start ``number``) to its end; return its exit code."""
    args = [sys.executable, str(WORKER), INPUT, "checkpoints.db", "out.db", "dlq.jsonl"]
    with spawn(args, tmp_path, f"start-{number}") as proc:
        try:
            return proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"start {number} did not finish within {DEADLINE}s")


def crash_counts(tmp_path: Path) -> dict[str, int]:
    """The crash counts in the latest checkpoint."""
    checkpoint = load_checkpoint(tmp_path / "checkpoints.db", PIPELINE)
    assert checkpoint is not None
    return dict(checkpoint.crash_counts)


def test_poison_pill_is_quarantined_after_max_crashes(tmp_path: Path) -> None:
    """A record that crashes every run is dead-lettered as crash_loop on the fourth start."""
    lines = write_input(tmp_path / INPUT)
    where = f"{INPUT}@{POISON}"

    codes: list[int] = []
    for number in range(1, MAX_STARTS + 1):
        code = start(tmp_path, number)
        codes.append(code)
        if code == 0:
            break
        stderr = (tmp_path / f"start-{number}.err").read_text()
        message = f"PipelineError: pipeline {PIPELINE!r} stopped: stage {STAGE!r} failed at {where}"
        assert f"{message}: RuntimeError: bug" in stderr, stderr
        assert {where: number} == crash_counts(tmp_path)
    assert [1] * MAX_CRASHES + [0] == codes

    final = len(codes)
    summary: dict[str, Any] = orjson.loads((tmp_path / f"start-{final}.out").read_bytes())
    assert "completed" == summary["outcome"]
    assert {"crash_loop": 1} == summary["dead_lettered"]
    assert summary["records_in"] - 1 == summary["records_out"]
    assert {INPUT: RECORDS} == summary["positions"]

    letters = list(riprap.deadletters.read_dead_letters(tmp_path / "dlq.jsonl"))
    expected_letter = [(PIPELINE, INPUT, POISON, "crash_loop", MAX_CRASHES, lines[POISON])]
    assert expected_letter == [
        (d.pipeline, d.partition, d.offset, d.reason, d.attempts, d.original_value())
        for d in letters
    ]
    # The letter keeps the step and the exception that stopped the run, not a stand-in.
    (letter,) = letters
    assert (STAGE, "RuntimeError", True, True) == (
        letter.stage,
        letter.error_type,
        f"RuntimeError: bug: cannot transform record {POISON}" in letter.message,
        "in transform" in letter.traceback,
    )

    database = tmp_path / "out.db"
    expected_rows = {
        i: {**orjson.loads(line), "double": orjson.loads(line)["n"] * 2}
        for i, line in enumerate(lines)
        if i != POISON
    }
    assert RECORDS - 1 == count(database, f"SELECT count(*) FROM {TABLE}")
    stored = query(database, f"SELECT id, value FROM {TABLE}")
    assert expected_rows == {key: orjson.loads(value) for key, value in stored}

    checkpoint = load_checkpoint(tmp_path / "checkpoints.db", PIPELINE)
    assert checkpoint is not None
    assert {INPUT: RECORDS} == dict(checkpoint.positions)
    assert {} == dict(checkpoint.crash_counts)  # the quarantine settled the count
