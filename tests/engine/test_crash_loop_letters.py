"""Crash-loop letters keep the exception that stopped the run: its stage, type and traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import riprap
import riprap.checkpoints
from riprap.checkpoints import CrashGuard, CrashRecord
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import JsonLinesDeadLetters, read_dead_letters

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def explode_on_13(value: int) -> int:
    """A bug that only record 13 triggers."""
    if value == 13:
        raise RuntimeError("bug on 13")
    return value


async def test_a_crash_loop_letter_keeps_the_original_error(tmp_path: Path) -> None:
    """The quarantined record's letter names the step, the RuntimeError and where it was raised."""
    backend = riprap.checkpoints.MemoryCheckpoints()

    def build() -> riprap.Pipeline:
        return (
            riprap.Pipeline(
                "loop",
                checkpoint=backend,
                dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
                max_crashes=2,
                batch_size=4,
            )
            .source(IterableSource("in", list(range(20))))
            .map("explode", explode_on_13)
            .sink(MemorySink())
        )

    for _ in range(2):
        with pytest.raises(riprap.PipelineError, match="memory@13"):
            await build().run()
    await build().run()
    (letter,) = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert ("explode", "crash_loop", "RuntimeError", 2) == (
        letter.stage,
        letter.reason,
        letter.error_type,
        letter.attempts,
    )
    assert "quarantined: RuntimeError: bug on 13" in letter.message
    assert "in explode_on_13" in letter.traceback
    assert 'raise RuntimeError("bug on 13")' in letter.traceback


def test_a_guard_written_before_tracebacks_were_kept_still_loads() -> None:
    """A crash stored as [stage, error, first, last] loads, with no type or traceback."""
    guard = CrashGuard.from_dict({"crashes": {"in@3": ["parse", "KeyError: 'id'", 1.0, 2.0]}})
    assert {"in@3": CrashRecord("parse", "KeyError: 'id'", 1.0, 2.0)} == dict(guard.crashes)


def test_a_crash_with_its_traceback_round_trips() -> None:
    """Type and traceback are saved with the crash and read back as they were."""
    crash = CrashRecord("parse", "KeyError: 'id'", 1.0, 2.0, "KeyError", "Traceback ...")
    guard = CrashGuard(crashes={"in@3": crash})
    assert guard == CrashGuard.from_dict(guard.to_dict())


def test_a_malformed_crash_is_refused() -> None:
    """A crash entry of another length is a damaged guard, not silently read."""
    with pytest.raises(ValueError, match="not \\[stage, error, first, last"):
        CrashGuard.from_dict({"crashes": {"in@3": ["parse", "x", 1.0, 2.0, "KeyError"]}})
