"""Helpers for tests that run pipelines in child processes (crash and signal tests).

Children write stdout and stderr to files (a pipe nobody reads could fill up
and stall them), every wait is bounded in polls and in time, and a child is
always killed and reaped on the way out, whatever the test did.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import riprap
import riprap.checkpoints
import riprap.testing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

DEADLINE = 60.0
"""Seconds any one wait may take: generous for a loaded machine, but bounded."""
POLL = 0.01
"""Seconds between two looks at a child's progress."""


@contextmanager
def spawn(args: Sequence[str], cwd: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` in ``cwd`` with output in ``name.out``/``name.err``; kill it on exit."""
    with (cwd / f"{name}.out").open("wb") as stdout, (cwd / f"{name}.err").open("wb") as stderr:
        proc = subprocess.Popen(args, cwd=cwd, stdout=stdout, stderr=stderr)
        proc.stderr_path = cwd / f"{name}.err"  # type: ignore[attr-defined]  # for failure messages
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=DEADLINE)


def wait_for_child(condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    """Block until the child ``proc`` makes ``condition`` hold; fail if it exits or time runs out.

    Unlike :func:`riprap.testing.wait_until` it is synchronous (the crash tests
    drive children from plain test functions) and it watches the child: an
    exit fails the test at once, with the end of the child's stderr.
    """
    deadline = time.monotonic() + DEADLINE
    for _ in range(int(DEADLINE / POLL)):
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the child exited with {proc.returncode} before {what}:\n{_tail(proc)}")
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    pytest.fail(f"timed out waiting for {what}")


def _tail(proc: subprocess.Popen[bytes]) -> str:
    """The end of a child's stderr, to say why it exited."""
    path: Path | None = getattr(proc, "stderr_path", None)  # set by spawn
    if path is None or not path.exists():
        return "(no stderr)"
    return path.read_text(errors="replace")[-3000:]


def query(database: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one query on a fresh connection; a missing database or table reads as no rows."""
    if not database.exists():
        return []
    conn = sqlite3.connect(database, timeout=DEADLINE)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def count(database: Path, sql: str, *params: Any) -> int:
    """The single number a ``SELECT count(*) ...`` returns (0 without the table)."""
    rows = query(database, sql, *params)
    return int(rows[0][0]) if rows else 0


def load_checkpoint(path: Path, pipeline: str) -> riprap.checkpoints.Checkpoint | None:
    """The latest checkpoint of ``pipeline`` in an SQLite store, read like a restart would."""
    if not path.exists():
        return None

    async def load() -> riprap.checkpoints.Checkpoint | None:
        backend = riprap.checkpoints.SqliteCheckpoints(path)
        try:
            return await backend.load(pipeline)
        finally:
            await backend.aclose()

    return anyio.run(load)


def checkpoint_position(path: Path, pipeline: str, partition: str) -> int:
    """The checkpointed position of one partition (0 before the first checkpoint)."""
    checkpoint = load_checkpoint(path, pipeline)
    return 0 if checkpoint is None else checkpoint.positions.get(partition, 0)
