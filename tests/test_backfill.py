"""``riprap backfill`` refusals: each a usage error (exit 2) that names the problem."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

PIPELINE = """
import riprap
from riprap.connectors.memory import IterableSource, MemorySink

class Windowed:
    '''A source that can backfill (it ignores the window: enough for the refusals).'''
    name = "windowed"
    def __init__(self): self._inner = IterableSource("windowed", [b"1"])
    async def open(self, context): await self._inner.open(context)
    async def read(self, n): return await self._inner.read(n)
    async def aclose(self): await self._inner.aclose()
    def backfill(self, start, stop): return Windowed()

no_backfill = riprap.Pipeline("plain").source(IterableSource("plain", [1])).sink(MemorySink())
duplicates = riprap.Pipeline("dup").source(Windowed()).sink(MemorySink())
"""

WINDOW = ("--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z")


def backfill(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``riprap backfill ARGS`` in a child process against the test pipelines."""
    (tmp_path / "p.py").write_text(textwrap.dedent(PIPELINE))
    return subprocess.run(
        [sys.executable, "-m", "riprap.cli", "backfill", "-q", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("p.py:no_backfill", *WINDOW), "cannot backfill"),
        (("p.py:duplicates", *WINDOW), "--allow-duplicates"),
        (
            ("p.py:duplicates", "--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z"),
            "not after --from",
        ),
        (
            ("p.py:duplicates", "--from", "2026-01-01T00:00:00", "--to", "2026-01-02T00:00:00Z"),
            "no timezone",
        ),
        (
            ("p.py:duplicates", "--from", "yesterday", "--to", "2026-01-02T00:00:00Z"),
            "not an ISO 8601 time",
        ),
    ],
)
def test_refusals_exit_2_naming_the_problem(
    tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    """A source without backfill, a non-idempotent sink or a bad window is a usage error."""
    done = backfill(tmp_path, *args)
    assert (2, True) == (done.returncode, named in done.stderr), done.stderr


def test_allow_duplicates_runs_into_a_sink_that_is_not_idempotent(tmp_path: Path) -> None:
    """With ``--allow-duplicates`` the run goes ahead under the backfill's own name."""
    done = backfill(tmp_path, "p.py:duplicates", *WINDOW, "--allow-duplicates", "--name", "dup-bf")
    assert (0, True) == (done.returncode, "'dup-bf'" in done.stderr), done.stderr
