"""Signals: the first SIGINT/SIGTERM stops a run gracefully, a second one aborts it.

Each test runs a pipeline from ``_signal_worker.py`` in a child process, once
as a script calling :func:`riprap.run` and once through the ``riprap run``
command (``python -m riprap.cli``), so the CLI's exit codes are covered too.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from ._signal_worker import DATABASE, PARTITION, SINK_ENTERED, TABLE
from ._subprocesses import DEADLINE, count, load_checkpoint, spawn, wait_for_child

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_signal_worker.py")
MODES = ["script", "cli"]


def command(mode: str, factory: str) -> list[str]:
    """The child's command line: the worker as a script, or ``riprap run file:factory``."""
    if mode == "cli":
        return [sys.executable, "-m", "riprap.cli", "run", "--quiet", f"{WORKER}:{factory}"]
    return [sys.executable, str(WORKER), factory]


def report_of(mode: str, tmp_path: Path, name: str) -> dict[str, Any]:
    """Outcome and counts of the child's run report (JSON from the script, text from the CLI)."""
    if mode == "script":
        summary: dict[str, Any] = orjson.loads((tmp_path / f"{name}.out").read_bytes())
        return {key: summary[key] for key in ("outcome", "records_in", "records_out")}
    text = (tmp_path / f"{name}.out").read_text()  # the report is on stdout
    return {
        "outcome": report_line(rf"^pipeline {name}: (\w+)$", text),
        "records_in": int(report_line(r"^\s+records in\s+([\d,]+)$", text).replace(",", "")),
        "records_out": int(report_line(r"^\s+written\s+([\d,]+)$", text).replace(",", "")),
    }


def report_line(pattern: str, text: str) -> str:
    """The first group of the report line matching ``pattern``."""
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        pytest.fail(f"no line matches {pattern!r} in the CLI output:\n{text}")
    return match[1]


def positions(tmp_path: Path, name: str) -> dict[str, int]:
    """The checkpointed positions of pipeline ``name`` (empty before the first checkpoint)."""
    checkpoint = load_checkpoint(tmp_path / "checkpoints.db", name)
    return {} if checkpoint is None else dict(checkpoint.positions)


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_drains_and_checkpoints_what_was_written(tmp_path: Path, mode: str) -> None:
    """One SIGTERM drains an endless run, exits 0, and checkpoints exactly the rows written."""
    with spawn(command(mode, "endless"), tmp_path, "endless") as proc:
        wait_for_child(
            lambda: positions(tmp_path, "endless").get(PARTITION, 0) >= 200,
            proc,
            "a checkpoint past 200 records",
        )
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=DEADLINE)
    expected_code = 0
    assert expected_code == returncode, (tmp_path / "endless.err").read_text()

    final = positions(tmp_path, "endless")[PARTITION]
    # Drained: everything read was written, and the checkpoint covers all of it.
    expected_report = {"outcome": "stopped", "records_in": final, "records_out": final}
    assert expected_report == report_of(mode, tmp_path, "endless")
    database = tmp_path / DATABASE
    rows = count(database, f"SELECT count(*) FROM {TABLE}")
    exact = count(
        database,
        f"SELECT count(*) FROM {TABLE} WHERE id < ? AND json_extract(value, '$.double') = 2 * id",
        final,
    )
    expected_rows = (final, final)
    assert expected_rows == (rows, exact)


@pytest.mark.parametrize("mode", MODES)
def test_second_sigint_aborts_a_stuck_drain(tmp_path: Path, mode: str) -> None:
    """A second SIGINT aborts a run whose sink never returns: a prompt non-zero exit."""
    with spawn(command(mode, "blocked"), tmp_path, "blocked") as proc:
        wait_for_child((tmp_path / SINK_ENTERED).exists, proc, "the sink's first write")
        proc.send_signal(signal.SIGINT)
        # Two signals sent back to back may merge into one; send the second
        # only once the first has been handled (the run logs it).
        err = tmp_path / "blocked.err"
        wait_for_child(lambda: "SIGINT received" in err.read_text(), proc, "the first SIGINT")
        proc.send_signal(signal.SIGINT)
        # The drain timeout is an hour: only the abort can end the run in time.
        returncode = proc.wait(timeout=DEADLINE)
    expected_code = 130 if mode == "cli" else 1
    assert expected_code == returncode, (tmp_path / "blocked.err").read_text()

    report = report_of(mode, tmp_path, "blocked")
    expected_report = {"outcome": "aborted", "records_out": 0}
    assert expected_report == {key: report[key] for key in expected_report}
    # Nothing reached the sink, so the final checkpoint covers nothing.
    expected_positions = {PARTITION: 0}
    assert expected_positions == positions(tmp_path, "blocked")
