"""``riprap dlq replay``: send dead letters back through a fixed pipeline, once each.

The replay runs under its own name (``<pipeline>.replay`` unless ``--name``
says otherwise), so its checkpoint records how far it read the store: running
it again resumes instead of sending letters twice. A replay says how many
letters it skipped because a replay under the same name sent them before
(under any filter), and how many its own filter left out: those are not
marked as replayed, so a later replay with another filter, or none, sends
them. ``--name`` starts a replay with a checkpoint of its own, which sends
every matching letter again. Kafka and S3 stores keep one position per
replay name whatever the filter: letters a filtered replay of them left out
count as read, and the replay says so.

``--to-topic kafka://HOST:PORT/TOPIC`` instead of ``--pipeline`` produces the
letters' original records back to a topic (the pipeline comes from
:func:`riprap.connectors.kafka.topic_replay_pipeline`, imported lazily), each
marked with its letter id; the replay checkpoints in the SQLite file
``--checkpoint`` (default ``<topic>.replay-checkpoint.db`` here).
"""

from __future__ import annotations

import functools
import sqlite3
from typing import TYPE_CHECKING

from riprap._core.errors import ConfigError
from riprap.cli._console import console_for
from riprap.cli._dlq import FilterValues, add_location_arguments, parse_time
from riprap.cli._load import load_pipeline
from riprap.cli._locations import (
    FileLocation,
    KafkaLocation,
    default_failed_to,
    location_argument,
    same_store,
)
from riprap.cli._runs import run_with_report
from riprap.deadletters._source import ALREADY_REPLAYED, FILTERED_OUT

if TYPE_CHECKING:
    import argparse

    from riprap._core.pipeline import Pipeline
    from riprap._core.protocols import Source
    from riprap.cli._console import Console
    from riprap.deadletters._stores import DeadLetterSink
    from riprap.observability._report import RunReport


def add_replay_command(
    dlq: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``replay`` to the ``riprap dlq`` subcommands; return its parser."""
    replay = dlq.add_parser(
        "replay",
        help="send dead letters back through a fixed pipeline or to a Kafka topic",
        description="Send dead letters back through a fixed pipeline, or their original"
        " records to a Kafka topic, once each.",
    )
    add_location_arguments(replay)
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--pipeline", help="path/to/file.py[:name] of the fix")
    target.add_argument(
        "--to-topic",
        type=location_argument,
        help="kafka://HOST:PORT[,HOST:PORT]/TOPIC: produce each letter's original key, value"
        " and headers there, plus a riprap-letter-id header (consumers dedupe by it)",
    )
    replay.add_argument(
        "--checkpoint",
        help="with --to-topic: the SQLite file the replay checkpoints in"
        " (default <topic>.replay-checkpoint.db here)",
    )
    replay.add_argument(
        "--name",
        help="the replay's checkpoint name (default <pipeline>.replay, or"
        " dlq-to-<topic>.replay); a new name replays letters an earlier replay read or passed",
    )
    replay.add_argument("--stage", help="only letters of this stage")
    replay.add_argument("--error-type", help="only this error type")
    replay.add_argument("--reason", help="only this reason")
    replay.add_argument("--since", type=parse_time, help="failed at or after (ISO time or 2h)")
    replay.add_argument("--until", type=parse_time, help="failed before (ISO time or 2h)")
    replay.add_argument("--rate", type=float, default=None, help="records per second at most")
    replay.add_argument(
        "--failed-to",
        type=location_argument,
        help="where letters that fail again go: a JSON Lines file (default"
        " <path>.replay-failed.jsonl, or <topic|bucket-prefix>.replay-failed.jsonl"
        " here for kafka:// and s3://), kafka://... or s3://...",
    )
    replay.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    replay.set_defaults(handler=run_replay)
    return replay


def run_replay(args: argparse.Namespace) -> int:
    """Run the parsed ``riprap dlq replay`` command; return the exit code.

    A store that cannot be read is an error line and exit 1 (see ``run_with_report``).

    Raises:
        ConfigError: The pipeline, ``--to-topic``, a filter or ``--failed-to`` is invalid.
    """
    from riprap.cli._remote import dead_letter_sink, replay_source
    from riprap.deadletters._stores import DeadLetterFilter

    console = console_for(args)
    pipeline, id_header = replay_target(args)
    letters = DeadLetterFilter(
        stage=args.stage,
        error_type=args.error_type,
        reason=args.reason,
        since=args.since,
        until=args.until,
    )
    if isinstance(args.path, FileLocation):  # a topic would be read whole once more
        warn_of_unmatched(console, args)
    failed_to = args.failed_to or default_failed_to(args.path)
    if same_store(failed_to, args.path):
        raise ConfigError("--failed-to", f"{failed_to} is the store being replayed")
    if args.to_topic is not None and same_store(failed_to, args.to_topic):
        raise ConfigError("--failed-to", f"{failed_to} is the topic replayed to")
    replay = replay_pipeline(
        pipeline,
        replay_source(
            args.path,
            filter=letters,
            rate_limit=args.rate,
            endpoint_url=args.endpoint_url,
            id_header=id_header,
        ),
        dead_letter_sink(failed_to, endpoint_url=args.endpoint_url),
        name=args.name,
    )
    where = f"to {args.to_topic}" if args.to_topic else f"through {pipeline.name!r}"
    console.message(
        f"replaying {args.path} {where} as {replay.name!r}; records failing again go to {failed_to}"
    )
    if not isinstance(args.path, FileLocation) and letters != DeadLetterFilter():
        console.message(
            f"letters the filter leaves out count as read under {replay.name!r}: a later"
            " replay under that name will not send them; replay them under another --name",
            level="warning",
        )
    return run_with_report(
        replay,
        console=console,
        progress=not args.quiet,
        after=functools.partial(explain_skips, console),
    )


def replay_target(args: argparse.Namespace) -> tuple[Pipeline, str | None]:
    """The pipeline a replay feeds (the fix, or one producing to ``--to-topic``) and its id header.

    Raises:
        ConfigError: ``--to-topic`` is not a topic or is the store replayed;
            ``--checkpoint`` without ``--to-topic``; the fix cannot be loaded.
    """
    target = args.to_topic
    if target is None:
        if args.checkpoint is not None:
            raise ConfigError(
                "--checkpoint", "goes with --to-topic: a --pipeline replay checkpoints as it says"
            )
        return load_pipeline(args.pipeline), None
    if not isinstance(target, KafkaLocation):
        raise ConfigError("--to-topic", f"{target} is not a kafka://HOST:PORT/TOPIC location")
    if same_store(target, args.path):
        raise ConfigError("--to-topic", f"{target} is the store being replayed")
    from riprap.cli._remote import topic_replay

    checkpoint = args.checkpoint or f"{target.topic}.replay-checkpoint.db"
    return topic_replay(target, checkpoint=checkpoint)


def warn_of_unmatched(console: Console, args: argparse.Namespace) -> None:
    """Warn of a ``--stage``, ``--error-type`` or ``--reason`` that no stored letter has: most
    likely a typo, which would replay nothing (the likeliest value meant is named)."""
    from riprap.cli._remote import scan_dead_letters

    seen = FilterValues(args)
    if not seen.wanted:
        return
    try:
        scan_dead_letters(args.path, seen, endpoint_url=args.endpoint_url)
    except (OSError, ValueError, sqlite3.Error):
        return  # missing or unreadable: the replay itself says so, as it always has
    for message in seen.unmatched(args.path):
        console.message(message, level="warning")


def explain_skips(console: Console, report: RunReport) -> None:
    """Say how many letters a replay skipped, why, and how to replay them after all."""
    name = report.pipeline
    replayed = report.source_outcomes.get(ALREADY_REPLAYED, 0)
    if replayed:
        console.message(
            f"skipped {_letters(replayed)} already replayed under {name!r};"
            " to send them again, replay under another --name"
        )
    passed = report.source_outcomes.get(FILTERED_OUT, 0)
    if passed:
        console.message(
            f"left {_letters(passed)} out: they do not match the filter, and a later replay"
            f" under {name!r} without it still sends them"
        )


def _letters(count: int) -> str:
    return f"{count} letter{'s' if count != 1 else ''}"


def replay_pipeline(
    pipeline: Pipeline, source: Source, failed: DeadLetterSink, *, name: str | None = None
) -> Pipeline:
    """``pipeline`` fed from dead letters, under its own name so replays resume, not repeat.

    The name is ``name``, by default ``<pipeline>.replay``. Letters that fail
    again go to ``failed``, never to the store being replayed.
    """
    return (
        pipeline.renamed(name or f"{pipeline.name}.replay")
        .with_options(dead_letter=failed)
        .with_source(source)
    )
