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
import subprocess
import sys
import textwrap
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson

import riprap
from riprap.cli._dlq import add_dlq_commands
from riprap.connectors.memory import IterableSource, MemorySink

if TYPE_CHECKING:
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
