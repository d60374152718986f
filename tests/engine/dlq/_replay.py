"""A failing pipeline, its fix, and the ``riprap dlq`` command, for replay tests of every store.

The failing pipeline reads raw JSON orders: every 5th has its amount in words
(``parse`` dead-letters it, reason ``bad_amount``), every 7th of the others a
negative quantity (``check`` dead-letters it, reason ``validation``). The fix
(``FIX``, a pipeline file) parses words too and has no check; it appends every
order it gets to ``out.jsonl``, so a record sent twice shows up twice.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.cli._dlq import add_dlq_commands, run_dlq_command
from riprap.connectors.memory import IterableSource, MemorySink

from .._subprocesses import DEADLINE, spawn, wait_for_child

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

FIX = textwrap.dedent(
    """
    import orjson
    import riprap
    from riprap.connectors.files import JsonLinesSink
    from riprap.connectors.memory import IterableSource

    def parse(raw):
        value = orjson.loads(raw)
        value["amount"] = 12.0 if value["amount"] == "twelve" else float(value["amount"])
        return value

    pipeline = (
        riprap.Pipeline("orders", checkpoint=riprap.checkpoints.SqliteCheckpoints("ckpt.db"))
        .source(IterableSource("unused", []))
        .map("parse", parse)
        .sink(JsonLinesSink("out.jsonl"))
    )
    """
)


def orders(count: int) -> list[bytes]:
    """Raw orders ``0 .. count - 1`` (see the module docstring for the bad ones)."""
    return [
        orjson.dumps(
            {
                "id": i,
                "amount": "twelve" if i % 5 == 0 else i,
                "qty": -1 if i % 7 == 0 and i % 5 else 1,
            }
        )
        for i in range(count)
    ]


def bad_amounts(count: int) -> set[int]:
    """Ids of the orders ``parse`` dead-letters."""
    return {i for i in range(count) if i % 5 == 0}


def bad_quantities(count: int) -> set[int]:
    """Ids of the orders ``check`` dead-letters."""
    return {i for i in range(count) if i % 7 == 0 and i % 5}


ORDERS = 600
"""How many orders the store tests' failing pipeline reads."""
FAILED = bad_amounts(ORDERS) | bad_quantities(ORDERS)
"""The ids of those orders it dead-letters."""


STILL_BROKEN = FIX.replace(
    "    return value\n",
    "    if value['id'] % 10 == 0:\n"
    "        raise riprap.DataError('still broken')\n"
    "    return value\n",
)
"""A fix that still rejects every 10th order, for what a replay's ``--failed-to`` receives."""
STILL_FAILING = {i for i in FAILED if i % 10 == 0}
"""The ids of the letters :data:`STILL_BROKEN` rejects again."""


def with_fix(directory: Path) -> Path:
    """``directory``, holding the fixed pipeline as ``fix.py`` (replays run there)."""
    (directory / "fix.py").write_text(FIX)
    return directory


def strict_parse(raw: bytes) -> dict[str, Any]:
    """The broken step: an amount in words is a data error."""
    value: dict[str, Any] = orjson.loads(raw)
    if not isinstance(value["amount"], int | float):
        raise riprap.DataError("amount is not a number", reason="bad_amount")
    return value


def check(value: dict[str, Any]) -> dict[str, Any]:
    """Rejects negative quantities."""
    if value["qty"] < 0:
        raise riprap.DataError("negative quantity", reason="validation")
    return value


def failing_pipeline(count: int, dead_letter: riprap.deadletters.DeadLetterSink) -> riprap.Pipeline:
    """The pipeline whose failures fill a dead-letter store."""
    return (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=dead_letter,
            dlq_guard=None,  # a third of the orders fail, by design
        )
        .source(IterableSource("orders", orders(count)))
        .map("parse", strict_parse)
        .map("check", check)
        .sink(MemorySink())
    )


def parse_dlq(*argv: str) -> argparse.Namespace:
    """Parse ``riprap dlq ...`` arguments with the parser the CLI builds."""
    parser = argparse.ArgumentParser(prog="riprap")
    add_dlq_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["dlq", *argv])


def run_dlq(*argv: str) -> int:
    """Run ``riprap dlq inspect|purge ...`` in this process; return its exit code.

    In-process, unlike :func:`riprap_dlq`, so tests read its output with
    ``capsys``; not through ``riprap.cli.main``, which would replace the test
    run's log handlers with the command's own.
    """
    return run_dlq_command(parse_dlq(*argv))


def replay_command(*args: str) -> list[str]:
    """The command line of ``riprap dlq replay ... --pipeline fix.py -q``."""
    return [
        sys.executable,
        "-m",
        "riprap.cli",
        "dlq",
        "replay",
        *args,
        "--pipeline",
        "fix.py",
        "-q",
    ]


def riprap_dlq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``riprap dlq ...`` in a child process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "riprap.cli", "dlq", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def records_in(report: str) -> int:
    """The "records in" count of a run report printed by the command."""
    match = re.search(r"^\s*records in\s+([\d,]+)$", report, re.MULTILINE)
    assert match is not None, f"no 'records in' line in:\n{report}"
    return int(match[1].replace(",", ""))


def replayed(directory: Path) -> Counter[int]:
    """How many times the fix wrote each order id to ``out.jsonl``."""
    path = directory / "out.jsonl"
    if not path.exists():
        return Counter()
    return Counter(orjson.loads(line)["id"] for line in path.read_bytes().splitlines())


def replay(store: Sequence[str], workdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``riprap dlq replay STORE... OPTIONS... --pipeline fix.py -q`` in ``workdir``; exit 0."""
    done = riprap_dlq("replay", *store, *options, "--pipeline", "fix.py", "-q", cwd=workdir)
    assert 0 == done.returncode, done.stderr
    return done


def check_replay_sends_each_record_once(store: Sequence[str], workdir: Path) -> None:
    """The fix gets every failed record of ``store`` once; replaying again sends nothing."""
    first = replay(store, workdir)
    assert len(FAILED) == records_in(first.stdout)
    assert dict.fromkeys(FAILED, 1) == replayed(workdir)
    second = replay(store, workdir)
    assert 0 == records_in(second.stdout)
    assert dict.fromkeys(FAILED, 1) == replayed(workdir)


def check_stopped_replay_resumes(store: Sequence[str], workdir: Path) -> None:
    """SIGTERM stops a rate-limited replay; the next one sends only the rest, each once."""
    with spawn(replay_command(*store, "--rate", "40"), workdir, "first") as proc:
        wait_for_child(lambda: replayed(workdir).total() >= 50, proc, "50 records replayed")
        proc.send_signal(signal.SIGTERM)
        assert 0 == proc.wait(timeout=DEADLINE), (workdir / "first.err").read_text()
    stopped_at = replayed(workdir).total()
    assert len(FAILED) > stopped_at
    done = replay(store, workdir)
    assert len(FAILED) - stopped_at == records_in(done.stdout)
    assert dict.fromkeys(FAILED, 1) == replayed(workdir)
