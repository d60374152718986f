"""``riprap dlq``: inspect, purge and replay dead letters from the command line.

``riprap dlq inspect PATH`` counts the stored letters by stage, error type and
reason and shows the latest few: never a payload, only its size and the
redacted error message. ``riprap dlq purge PATH --older-than 7d`` deletes the
letters whose last failure is older than that (``--dry-run`` only counts
them). ``riprap dlq replay PATH --pipeline fix.py`` sends the letters back
through a fixed pipeline, once each; ``--to-topic kafka://HOST:PORT/TOPIC``
instead produces their original records back to a Kafka topic.

Every command sees a letter once, by its ``id``: a copy stored again (the
failing run restarted after a crash) is folded into the first, and the counts
say how many repeats were folded.

PATH is a JSON Lines or SQLite file, ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``
(a dead-letter topic, read up to its end when the command starts) or
``s3://BUCKET/PREFIX`` (objects of an S3 dead-letter sink; ``--endpoint-url``
for MinIO and other S3-compatible stores, credentials from the usual AWS
environment). A malformed PATH is a usage error.

Exit codes: 0 done; 1 the store is corrupt, cannot be read or written, or does
not support the command (purging a Kafka topic); 2 nothing is stored at PATH,
or the command line is invalid.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import heapq
import re
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO, final

import orjson

from riprap.cli._console import console_for
from riprap.cli._help import HELP_FORMAT, plain
from riprap.cli._locations import KafkaLocation, S3Location, location_argument
from riprap.cli._remote import purge, scan_dead_letters
from riprap.cli._runs import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from riprap.deadletters._stores import DeadLetterFilter
from riprap.observability._redact import DEFAULT_REDACTOR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from riprap.cli._console import Console
    from riprap.cli._locations import DeadLetterLocation
    from riprap.deadletters._envelope import DeadLetter

EXIT_MISSING = EXIT_USAGE

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
        "dlq",
        help="inspect, purge and replay dead letters",
        description=plain(__doc__ or ""),
        formatter_class=HELP_FORMAT,
    )
    dlq.set_defaults(handler=run_dlq_command)
    commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    inspect_cmd = commands.add_parser("inspect", help="count dead letters and show the latest")
    add_location_arguments(inspect_cmd)
    inspect_cmd.add_argument("--stage", help="only letters of this stage")
    inspect_cmd.add_argument("--error-type", help="only this error type (bare or qualified name)")
    inspect_cmd.add_argument("--reason", help="only this reason (data_error, retries_exhausted...)")
    inspect_cmd.add_argument("--since", type=parse_time, help="failed at or after (ISO time or 2h)")
    inspect_cmd.add_argument("--until", type=parse_time, help="failed before (ISO time or 2h)")
    inspect_cmd.add_argument("--show", type=_count, default=10, help="latest letters to show")
    inspect_cmd.add_argument("--json", action="store_true", help="one JSON object on stdout")

    purge = commands.add_parser("purge", help="delete old dead letters")
    add_location_arguments(purge)
    purge.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        help="delete letters whose last failure is older than this (90s, 15m, 12h, 7d)",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted; delete nothing"
    )
    return commands


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``path`` argument (a file, ``kafka://`` or ``s3://`` location) and ``--endpoint-url``."""
    parser.add_argument(
        "path",
        type=location_argument,
        help="the dead-letter store: a JSON Lines or SQLite file,"
        " kafka://HOST:PORT[,HOST:PORT]/TOPIC or s3://BUCKET/PREFIX",
    )
    parser.add_argument(
        "--endpoint-url", help="S3 endpoint for s3:// locations (MinIO, a test server)"
    )


def run_dlq_command(args: argparse.Namespace) -> int:
    """Run the parsed ``riprap dlq ...`` command; return the exit code.

    With ``--log-format json`` inspect answers in JSON (as with ``--json``) and
    every other line is a JSON object too.
    """
    console = console_for(args)
    try:
        if args.dlq_command == "inspect":
            args.json = args.json or console.json
            warn = functools.partial(console.message, level="warning")
            return inspect_dead_letters(args, out=console.out, warn=warn)
        if args.dlq_command == "purge":
            return _purge(args, console=console)
    except FileNotFoundError:
        console.error(f"{args.path}: no dead letters stored there", command="dlq")
        return EXIT_MISSING
    except (OSError, ValueError, sqlite3.Error) as error:
        console.error(str(error), command="dlq")
        return EXIT_FAILED
    raise ValueError(f"unknown dlq command {args.dlq_command!r}")


FILTER_FIELDS = {"stage": "stage", "error_type": "error type", "reason": "reason"}
"""The filters that name one value of a letter's field, and what they name."""


@final
class FilterValues:
    """The ``--stage``, ``--error-type`` and ``--reason`` given, and the values letters hold.

    Called with every stored letter, it tells afterwards which given value no
    letter has: most likely a typo, which would select nothing.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.wanted = {
            field: getattr(args, field) for field in FILTER_FIELDS if getattr(args, field)
        }
        self._stored: dict[str, set[str]] = {field: set() for field in self.wanted}

    def __call__(self, letter: DeadLetter) -> None:
        for field, values in self._stored.items():
            values.add(getattr(letter, field))

    def unmatched(self, location: object) -> list[str]:
        """A warning for each given value no letter had, naming the likeliest one meant."""
        messages = []
        for field, value in self.wanted.items():
            values = sorted(self._stored[field])
            if value in values:
                continue
            close = difflib.get_close_matches(value, values, n=1)
            meant = f" (did you mean {close[0]!r}?)" if close else ""
            what = FILTER_FIELDS[field]
            messages.append(
                f"no letter in {location} has {what} {value!r}{meant}; its {what}s: "
                f"{', '.join(values[:10]) or 'none'}"
            )
        return messages


def inspect_dead_letters(
    args: argparse.Namespace, *, out: TextIO, warn: Callable[[str], None] | None = None
) -> int:
    """Print counts by stage, error type and reason, then the ``args.show`` latest letters.

    Latest means the last to fail (``last_failure_at``), oldest of them first.
    The first line also says how many repeats the read folded (copies of a
    letter already read, counted over the whole store whatever the filters).
    """
    selector = DeadLetterFilter(
        stage=args.stage,
        error_type=args.error_type,
        reason=args.reason,
        since=args.since,
        until=args.until,
    )
    counts: dict[str, Counter[str]] = {k: Counter() for k in ("stage", "error_type", "reason")}
    # The latest by failure time, not by read order: a topic is read partition by partition.
    newest: list[tuple[float, int, DeadLetter]] = []
    total = 0

    seen = FilterValues(args)

    def visit(letter: DeadLetter) -> None:  # one copy per id: readers fold repeats
        nonlocal total
        seen(letter)
        if selector.matches(letter):
            total += 1
            for field, counter in counts.items():
                counter[getattr(letter, field)] += 1
            if args.show:
                heapq.heappush(newest, (letter.last_failure_at, total, letter))
                if len(newest) > args.show:
                    heapq.heappop(newest)

    location: DeadLetterLocation = args.path
    repeats = scan_dead_letters(location, visit, endpoint_url=args.endpoint_url)
    if warn is not None:
        for message in seen.unmatched(location):
            warn(message)
    latest = [letter for _, _, letter in sorted(newest)]
    if args.json:
        out.write(_inspect_json(str(location), total, repeats, counts, latest) + "\n")
    else:
        out.write(_inspect_text(str(location), total, repeats, counts, latest))
    return EXIT_OK


def _inspect_json(
    path: str,
    total: int,
    repeats: int,
    counts: dict[str, Counter[str]],
    latest: Iterable[DeadLetter],
) -> str:
    report = {
        "path": path,
        "total": total,
        "repeats_folded": repeats,
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
    path: str,
    total: int,
    repeats: int,
    counts: dict[str, Counter[str]],
    latest: list[DeadLetter],
) -> str:
    lines = [
        f"{path}: {total} dead letter{'s' if total != 1 else ''}"
        f" ({repeats} repeat{'s' if repeats != 1 else ''} folded)"
    ]
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


def _purge(args: argparse.Namespace, *, console: Console) -> int:
    before = time.time() - args.older_than
    if args.dry_run:
        console.result(_dry_run(args.path, before, args.endpoint_url))
        return EXIT_OK
    removed, kept = purge(args.path, before=before, endpoint_url=args.endpoint_url)
    console.result(f"{args.path}: {removed} last failed before {_iso(before)}{kept}")
    return EXIT_OK


def _dry_run(location: DeadLetterLocation, before: float, endpoint_url: str | None) -> str:
    """What ``purge`` would remove from ``location``, counted by reading it; nothing changes.

    Raises:
        OSError: ``location`` is a Kafka topic, which purge does not support.
    """
    if isinstance(location, KafkaLocation):
        purge(location, before=before)  # raises: topics are purged by their retention
    older = newer = 0

    def visit(letter: DeadLetter) -> None:
        nonlocal older, newer
        if letter.last_failure_at < before:
            older += 1
        else:
            newer += 1

    repeats = scan_dead_letters(location, visit, endpoint_url=endpoint_url)
    whole = (
        " (objects are deleted whole: old letters in objects that also hold newer ones are kept)"
        if isinstance(location, S3Location)
        else ""
    )
    return (
        f"{location}: dry run, nothing deleted: would remove {_plural(older, 'dead letter')}"
        f" last failed before {_iso(before)}{whole} and fold"
        f" {_plural(repeats, 'repeat')}; {newer} newer kept"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
