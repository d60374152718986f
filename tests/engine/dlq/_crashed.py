"""A dead-letter store filled across a crash: the failing pipeline SIGKILLed, then rerun.

The worker (``_dlq_crash_worker.py``) checkpoints only when its run ends, so
the letters the killed run wrote are written again by the rerun: the store
then holds repeats (same ``id``) unless it refuses them (SQLite). The rerun
uses another batch size, so that S3 objects (named after the letters they
hold) are grouped differently and do not simply overwrite each other.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from .._subprocesses import DEADLINE, spawn, wait_for_child
from ._replay import FAILED, records_in, replay, replayed, run_dlq, with_fix

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pytest

WORKER = Path(__file__).with_name("_dlq_crash_worker.py")
PAUSE = "0.005"
"""Seconds each record of the killed run takes: it lasts seconds, the kill lands mid-run."""
KILL_AFTER = 120
"""Letters the first run must have written when it is killed (of ``len(FAILED)``).

More than a stopped replay gets through, so that repeats lie after its position."""


def written(workdir: Path) -> int:
    """Letters the worker runs in ``workdir`` have written durably so far."""
    log = workdir / "written.log"
    return log.read_bytes().count(b"\n") if log.exists() else 0


def crash_then_finish(location: str, workdir: Path, *, endpoint_url: str | None = None) -> int:
    """Fill ``location``: kill -9 a run after :data:`KILL_AFTER` letters, rerun it to the end.

    Returns:
        The letters the killed run had written (at least; it may have written
        one more batch before the log said so).
    """
    endpoint = [] if endpoint_url is None else [endpoint_url]
    killed = [sys.executable, str(WORKER), location, "10", PAUSE, *endpoint]
    with spawn(killed, workdir, "killed") as proc:
        wait_for_child(lambda: written(workdir) >= KILL_AFTER, proc, f"{KILL_AFTER} dead letters")
        proc.send_signal(signal.SIGKILL)
        assert -signal.SIGKILL == proc.wait(timeout=DEADLINE)
    before = written(workdir)
    assert len(FAILED) > before  # killed mid-run: letters were still to come
    rerun = [sys.executable, str(WORKER), location, "7", "0", *endpoint]  # nothing to kill
    with spawn(rerun, workdir, "rerun") as proc:
        code = proc.wait(timeout=DEADLINE)
        assert 0 == code, (workdir / "rerun.err").read_text()
    assert before + len(FAILED) == written(workdir)  # the rerun wrote every letter again
    return before


def inspected(store: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, int]:
    """``(total, repeats_folded)`` of ``riprap dlq inspect STORE... --json``."""
    capsys.readouterr()
    assert 0 == run_dlq("inspect", *store, "--json")
    report = orjson.loads(capsys.readouterr().out)
    return report["total"], report["repeats_folded"]


def folded_in_report(report: str) -> int:
    """The ``repeats_folded`` source outcome of a run report printed by the command."""
    match = re.search(r"^\s*repeats_folded\s+([\d,]+)$", report, re.MULTILINE)
    return 0 if match is None else int(match[1].replace(",", ""))


def check_replay_of_crashed_store(store: Sequence[str], workdir: Path, repeats: int) -> None:
    """The fix gets every failed record once; the report says how many repeats were folded."""
    workdir.mkdir()
    with_fix(workdir)
    done = replay(store, workdir)
    assert (len(FAILED), repeats) == (records_in(done.stdout), folded_in_report(done.stdout))
    assert dict.fromkeys(FAILED, 1) == replayed(workdir)
