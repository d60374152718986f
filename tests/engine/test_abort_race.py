"""A second signal at any moment ends a run cleanly: aborted, exit 130, nothing internal shown.

Each try starts a pipeline of ``_signal_worker.py`` in a child process, through
``riprap run`` or as a script calling :func:`riprap.run`, sends SIGTERM at a
random moment counted from when its source begins to open (so from right after
start-up began), and a second SIGTERM 0 to 20 ms later. Whatever the moments,
the run must end aborted (exit 130 from the command, 1 from the script) or, if
the graceful stop had already ended the run before the second signal (or the
kernel merged the two), stopped with everything read written and checkpointed
(exit 0); no internal exception type or traceback may reach the output; and the
checkpointed position never passes a record that is not written (I1). The
moments come from a seeded generator: a failing try names its delays.
"""

from __future__ import annotations

import random
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import riprap.deadletters

from ._signal_worker import (
    CHECKPOINTS,
    DATABASE,
    DEAD_LETTERS,
    PARTITION,
    SLOW_OPEN,
    SOURCE_OPENING,
    TABLE,
)
from ._subprocesses import DEADLINE, load_checkpoint, query, spawn, wait_for_child

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_signal_worker.py")
SEED = 130
SECOND_WITHIN = 0.020
"""The second signal follows the first by up to this many seconds."""
BUDGET = 25.0
"""Seconds one test may spend on its tries; it stops starting new ones after that."""
INTERNAL = (
    "Traceback",
    "BrokenResourceError",
    "ClosedResourceError",
    "EndOfStream",
    "WouldBlock",
    "ExceptionGroup",
    "CancelledError",
    "Cancelled via",
    "KeyboardInterrupt",
)
"""What must never reach the output of a run ended by signals."""
EXIT_CODES = {
    "cli": {"aborted": 130, "stopped": 0},
    "script": {"aborted": 1, "stopped": 0},
}
"""The exit code each acceptable outcome has (the script worker exits 1 when aborted)."""


@dataclass(frozen=True)
class Landing:
    """What one try left behind, next to the delays that produced it."""

    first: float
    """Seconds from the source beginning to open to the first SIGTERM."""
    second: float
    """Seconds from the first SIGTERM to the second."""
    outcome: str
    code: int
    internal: tuple[str, ...]
    """Internal exception names or ``Traceback`` found in the output."""
    lost: tuple[int, ...]
    """Records below the checkpointed position that are neither written nor dead-lettered."""
    undrained: int | None
    """For a stopped run: records read but not covered by the checkpoint (0 when drained)."""
    unsaved: bool | None
    """For the script: whether the checkpoint differs from the report's positions."""


def command(mode: str, factory: str) -> list[str]:
    """The child's command line: ``riprap run file:factory``, or the worker as a script."""
    if mode == "cli":
        return [sys.executable, "-m", "riprap.cli", "run", "--quiet", f"{WORKER}:{factory}"]
    return [sys.executable, str(WORKER), factory]


def report_of(mode: str, directory: Path, name: str) -> dict[str, Any]:
    """Outcome, records read and positions from the child's report (``{}`` without one)."""
    if mode == "script":
        out = (directory / f"{name}.out").read_bytes()
        return dict(orjson.loads(out)) if out.strip() else {}
    text = (directory / f"{name}.out").read_text()  # the report is on stdout
    outcome = re.search(rf"^pipeline {name}: (\w+)$", text, re.MULTILINE)
    read = re.search(r"^\s+records in\s+([\d,]+)$", text, re.MULTILINE)
    if outcome is None or read is None:
        return {}
    return {"outcome": outcome[1], "records_in": int(read[1].replace(",", ""))}


def lost_below(directory: Path, position: int) -> tuple[int, ...]:
    """The first few offsets below ``position`` that neither the sink nor the DLQ holds."""
    written = {row[0] for row in query(directory / DATABASE, f"SELECT id FROM {TABLE}")}
    letters = directory / DEAD_LETTERS
    if letters.exists():
        written |= {letter.offset for letter in riprap.deadletters.read_dead_letters(letters)}
    return tuple(n for n in range(position) if n not in written)[:5]


def attempt(mode: str, factory: str, directory: Path, first: float, second: float) -> Landing:
    """Run one try: start the child, two SIGTERMs after ``first`` and ``second`` seconds."""
    directory.mkdir()
    with spawn(command(mode, factory), directory, factory) as proc:
        opening = directory / SOURCE_OPENING
        wait_for_child(opening.exists, proc, "the source to begin opening")
        time.sleep(first)
        proc.send_signal(signal.SIGTERM)
        time.sleep(second)
        proc.send_signal(signal.SIGTERM)  # a no-op once the child has exited
        code = proc.wait(timeout=DEADLINE)
    output = (directory / f"{factory}.err").read_text() + (directory / f"{factory}.out").read_text()
    report = report_of(mode, directory, factory)
    checkpoint = load_checkpoint(directory / CHECKPOINTS, factory)
    positions = {} if checkpoint is None else dict(checkpoint.positions)
    position = positions.get(PARTITION, 0)
    outcome = report.get("outcome", "no report")
    return Landing(
        first=first,
        second=second,
        outcome=outcome,
        code=code,
        internal=tuple(name for name in INTERNAL if name in output),
        lost=lost_below(directory, position),
        undrained=report["records_in"] - position if outcome == "stopped" else None,
        unsaved=report["positions"] != positions if mode == "script" and report else None,
    )


def clean(mode: str, landing: Landing) -> Landing:
    """The landing a clean end would have left, given the outcome the run reported."""
    acceptable = landing.outcome in EXIT_CODES[mode]
    return Landing(
        first=landing.first,
        second=landing.second,
        outcome=landing.outcome if acceptable else "aborted or stopped",
        code=EXIT_CODES[mode].get(landing.outcome, EXIT_CODES[mode]["aborted"]),
        internal=(),
        lost=(),
        undrained=0 if landing.outcome == "stopped" else None,
        unsaved=False if mode == "script" and landing.outcome != "no report" else None,
    )


def run_tries(
    mode: str, factory: str, tmp_path: Path, tries: int, first_within: float, seed: int
) -> tuple[list[Landing], list[Landing]]:
    """``tries`` tries at seeded random moments (within ``BUDGET`` seconds): (expected, actual)."""
    rng = random.Random(seed)
    deadline = time.monotonic() + BUDGET
    actual: list[Landing] = []
    for n in range(tries):
        if time.monotonic() > deadline:
            break
        first, second = rng.uniform(0, first_within), rng.uniform(0, SECOND_WITHIN)
        actual.append(attempt(mode, factory, tmp_path / f"try{n}", first, second))
    return [clean(mode, landing) for landing in actual], actual


@pytest.mark.parametrize("factory", ["endless", "lettered"])
@pytest.mark.parametrize("mode", ["cli", "script"])
def test_a_second_signal_at_any_moment_of_a_run_ends_it_cleanly(
    tmp_path: Path, mode: str, factory: str
) -> None:
    """Two SIGTERMs 0-20 ms apart, from right after start-up to mid-run, end the run cleanly."""
    seed = SEED + 10 * ["cli", "script"].index(mode) + ["endless", "lettered"].index(factory)
    expected, actual = run_tries(mode, factory, tmp_path, 10, 0.1, seed)
    assert expected == actual


@pytest.mark.parametrize("mode", ["cli", "script"])
def test_signals_during_start_up_end_the_run_cleanly(tmp_path: Path, mode: str) -> None:
    """Two SIGTERMs while the source is still opening end the run cleanly, aborted or stopped."""
    seed = SEED + 100 + ["cli", "script"].index(mode)
    expected, actual = run_tries(mode, "slow_start", tmp_path, 8, SLOW_OPEN + 0.01, seed)
    assert expected == actual
