"""``riprap dlq``: inspect and purge dead letters from the command line.

``riprap dlq inspect PATH`` counts the stored letters by stage, error type and
reason and shows the latest few: never a payload, only its size and the
redacted error message. ``riprap dlq purge PATH --older-than 7d`` deletes the
letters whose last failure is older than that.

Exit codes: 0 done; 1 the store is corrupt or cannot be read or written;
2 nothing is stored at PATH.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import time
from collections import Counter, deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from ._dlq_sinks import DeadLetterFilter, purge_dead_letters, read_dead_letters
from ._redact import DEFAULT_REDACTOR

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._deadletter import DeadLetter

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MISSING = 2

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_MESSAGE_WIDTH = 200

# What --json shows of a letter: everything but the payloads and the traceback.
_SUMMARY_FIELDS = (
    "id",
    "pipeline",
    "stage",
    "reason",
    "error_type",
    "message",
    "attempts",
    "first_failure_at",
    "last_failure_at",
    "source",
    "partition",
    "offset",
    "value_encoding",
    "riprap_version",
    "config_hash",
    "trace_id",
    "idempotency_key",
)


def parse_duration(text: str) -> float:
    """Seconds in ``text`` such as ``90s``, ``15m``, ``12h`` or ``7d``.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a number followed by s, m, h or d.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number and a unit s, m, h or d (e.g. 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(text: str) -> float:
    """Epoch seconds of an ISO 8601 time (UTC unless it says otherwise) or of a duration ago.

    Raises:
        argparse.ArgumentTypeError: ``text`` is neither.
    """
    if _DURATION.fullmatch(text.strip()):
        return time.time() - parse_duration(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use ISO 8601 (2024-05-01T12:00:00Z) or a duration ago (2h)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def add_dlq_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``dlq`` with ``inspect`` and ``purge`` to the ``riprap`` command's subparsers.

    The ``dlq`` parser's ``handler`` default is :func:`run_dlq_command`.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``dlq`` parser's own subparsers, for more ``dlq`` commands (``replay``).
    """
    dlq = subparsers.add_parser(
        "dlq", help="inspect and purge dead letters", description=__doc__.splitlines()[0]
    )
    dlq.set_defaults(handler=run_dlq_command)
    commands = dlq.add_subparsers(dest="dlq_command", required=True)

    inspect_cmd = commands.add_parser("inspect", help="count dead letters and show the latest")
    inspect_cmd.add_argument("path", help="the dead-letter store (JSON Lines or SQLite)")
    inspect_cmd.add_argument("--stage", help="only letters of this stage")
    inspect_cmd.add_argument("--error-type", help="only this error type (bare or qualified name)")
    inspect_cmd.add_argument("--reason", help="only this reason (data_error, retries_exhausted...)")
    inspect_cmd.add_argument("--since", type=parse_time, help="failed at or after (ISO time or 2h)")
    inspect_cmd.add_argument("--until", type=parse_time, help="failed before (ISO time or 2h)")
    inspect_cmd.add_argument("--show", type=_count, default=10, help="latest letters to show")
    inspect_cmd.add_argument("--json", action="store_true", help="one JSON object on stdout")

    purge = commands.add_parser("purge", help="delete old dead letters")
    purge.add_argument("path", help="the dead-letter store (JSON Lines or SQLite)")
    purge.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        help="delete letters whose last failure is older than this (90s, 15m, 12h, 7d)",
    )
    return commands


def run_dlq_command(args: argparse.Namespace) -> int:
    """Run the parsed ``riprap dlq ...`` command; return the exit code."""
    try:
        if args.dlq_command == "inspect":
            return inspect_dead_letters(args, out=sys.stdout)
        if args.dlq_command == "purge":
            return _purge(args, out=sys.stdout)
    except FileNotFoundError:
        sys.stderr.write(f"riprap dlq: {args.path}: no dead letters stored there\n")
        return EXIT_MISSING
    except (OSError, ValueError, sqlite3.Error) as error:
        sys.stderr.write(f"riprap dlq: {error}\n")
        return EXIT_FAILED
    raise ValueError(f"unknown dlq command {args.dlq_command!r}")


def inspect_dead_letters(args: argparse.Namespace, *, out: TextIO) -> int:
    """Print counts by stage, error type and reason, then the ``args.show`` latest letters."""
    selector = DeadLetterFilter(
        stage=args.stage,
        error_type=args.error_type,
        reason=args.reason,
        since=args.since,
        until=args.until,
    )
    counts: dict[str, Counter[str]] = {k: Counter() for k in ("stage", "error_type", "reason")}
    latest: deque[DeadLetter] = deque(maxlen=args.show)
    total = 0
    for letter in read_dead_letters(args.path):
        if selector.matches(letter):
            total += 1
            for field, counter in counts.items():
                counter[getattr(letter, field)] += 1
            latest.append(letter)
    if args.json:
        out.write(_inspect_json(args.path, total, counts, latest) + "\n")
    else:
        out.write(_inspect_text(args.path, total, counts, latest))
    return EXIT_OK


def _inspect_json(
    path: str, total: int, counts: dict[str, Counter[str]], latest: Iterable[DeadLetter]
) -> str:
    report = {
        "path": path,
        "total": total,
        **{f"by_{field}": dict(counter.most_common()) for field, counter in counts.items()},
        "latest": [_summary(letter) for letter in latest],
    }
    return orjson.dumps(report).decode()


def _summary(letter: DeadLetter) -> dict[str, Any]:
    summary = {name: getattr(letter, name) for name in _SUMMARY_FIELDS}
    summary["message"] = DEFAULT_REDACTOR.redact(letter.message)
    summary["value_size"] = letter.value_size()
    return summary


def _inspect_text(
    path: str, total: int, counts: dict[str, Counter[str]], latest: deque[DeadLetter]
) -> str:
    lines = [f"{path}: {total} dead letter{'s' if total != 1 else ''}"]
    for field, counter in counts.items():
        lines.append(f"by {field.replace('_', ' ')}:")
        width = max((len(name) for name in counter), default=0)
        lines.extend(f"  {name:<{width}}  {n}" for name, n in counter.most_common())
    if latest:
        lines.append(f"latest {len(latest)}:")
        lines.extend(_entry(letter) for letter in latest)
    return "\n".join(lines) + "\n"


def _entry(letter: DeadLetter) -> str:
    where = f"{letter.partition}@{letter.offset}" if letter.partition is not None else "-"
    message = DEFAULT_REDACTOR.redact(letter.message).strip().splitlines() or [""]
    first = message[0][:_MESSAGE_WIDTH]
    return (
        f"  {_iso(letter.last_failure_at)}  {letter.stage}  {letter.reason}  {letter.error_type}"
        f"  {where}  attempts={letter.attempts}  value={letter.value_size()} bytes"
        f"  id={letter.id[:12]}\n    {first}"
    )


def _purge(args: argparse.Namespace, *, out: TextIO) -> int:
    before = time.time() - args.older_than
    removed = purge_dead_letters(args.path, before=before)
    out.write(
        f"{args.path}: removed {removed} dead letter{'s' if removed != 1 else ''}"
        f" last failed before {_iso(before)}\n"
    )
    return EXIT_OK


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
