"""The topology examples work as their docstrings say: merged sources, late events aside."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from riprap.connectors.sqlite import read_table_sync
from tests._examples import EXAMPLES, load_example

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from types import ModuleType

DEADLINE = 60.0


@pytest.fixture
def late_example() -> Iterator[ModuleType]:
    """``examples/late_side_output.py``, imported for one test."""
    module = load_example("late_side_output.py")
    yield module
    del sys.modules[module.__name__]


def run_example(name: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` as a script on its embedded defaults, its data in ``data_dir``."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def test_merged_sources_example_reads_both_files_into_one_table(tmp_path: Path) -> None:
    """Every order of both files lands once, tagged with its source; a rerun reads nothing."""
    first = run_example("merged_sources.py", tmp_path)
    assert 0 == first.returncode, first.stderr
    assert "source orders: jsonl (JsonLinesSource)" in first.stdout
    assert "source backfill: jsonl (JsonLinesSource)" in first.stdout
    table = read_table_sync(tmp_path / "orders.db", "orders")
    via = {key: row["via"] for key, row in table.items()}
    expected = dict.fromkeys(range(400), "backfill") | dict.fromkeys(range(10000, 11000), "orders")
    assert expected == via
    second = run_example("merged_sources.py", tmp_path)
    assert 0 == second.returncode, second.stderr
    assert "records in                 0" in second.stdout


def test_late_side_output_example_keeps_every_late_reading(
    late_example: ModuleType, tmp_path: Path
) -> None:
    """Each reading is absorbed by a window or kept in the late table; none is dead-lettered."""
    report = late_example.main(["--data-dir", str(tmp_path)])
    late = read_table_sync(tmp_path / "late.db", "late")
    by_sink = {sink.step_id: sink.records_out for sink in report.sinks}
    assert 0 < len(late) == by_sink["late"]
    assert late_example.READINGS == report.absorbed + len(late)
    assert ({}, "completed") == (dict(report.dead_lettered), report.outcome)
    assert all(row["minute"] % 60 == 0 for row in late.values())
