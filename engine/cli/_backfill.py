"""``riprap backfill``: run a pipeline once over a time window, under a checkpoint name of its own.

The pipeline is loaded as ``riprap run`` loads it. Its source must offer
``backfill(start, stop)``, returning a source that reads the records stamped
from ``start`` up to (not including) ``stop`` and then ends, without touching
the live pipeline's positions (``KafkaSource.backfill`` joins no consumer
group). The command runs
``pipeline.renamed(name).with_source(source.backfill(start, stop))``: its own
name keeps its checkpoint apart from the live pipeline's, so a backfill that
was stopped resumes where it was when started again with the same window.

Records the live pipeline wrote already are written again, so the sink must
be idempotent (an upsert by key, deterministic object names); the command
refuses one that is not unless ``--allow-duplicates`` is given.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from riprap._core.errors import ConfigError
from riprap.cli._console import console_for
from riprap.cli._load import load_pipeline, source_hook
from riprap.cli._runs import run_with_report

if TYPE_CHECKING:
    from riprap._core.pipeline import Pipeline


def add_backfill_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``riprap backfill`` to the commands."""
    cmd = commands.add_parser(
        "backfill",
        help="run a pipeline over a time window under its own checkpoint name",
        description="Run a pipeline once over the records stamped from --from to --to, "
        "under a checkpoint name of its own; the report goes to stdout.",
    )
    cmd.add_argument("pipeline", help="path/to/file.py[:name] (name defaults to 'pipeline')")
    cmd.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        required=True,
        type=instant,
        help="ISO time with a timezone",
    )
    cmd.add_argument(
        "--to",
        dest="stop",
        metavar="TIME",
        required=True,
        type=instant,
        help="ISO time with a timezone (excluded)",
    )
    cmd.add_argument(
        "--name", help="checkpoint name (default <pipeline>.backfill-<from>-<to>, in UTC)"
    )
    cmd.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="run into a sink that is not idempotent (records written before are written again)",
    )
    cmd.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    cmd.set_defaults(handler=run_backfill)


def run_backfill(args: argparse.Namespace) -> int:
    """Run the parsed ``riprap backfill`` command; return the exit code.

    Raises:
        ConfigError: The pipeline cannot backfill, or the window is empty.
    """
    console = console_for(args)
    pipeline = load_pipeline(args.pipeline)
    backfill = backfill_pipeline(
        pipeline, args.start, args.stop, name=args.name, allow_duplicates=args.allow_duplicates
    )
    console.message(
        f"backfilling {pipeline.name!r} from {args.start.isoformat()} to "
        f"{args.stop.isoformat()} as {backfill.name!r}"
    )
    return run_with_report(backfill, console=console, progress=not args.quiet)


def backfill_pipeline(
    pipeline: Pipeline,
    start: datetime,
    stop: datetime,
    *,
    name: str | None = None,
    allow_duplicates: bool = False,
) -> Pipeline:
    """``pipeline`` reading ``start``..``stop`` from its source's backfill, under its own name.

    Raises:
        ConfigError: The window is empty, the source cannot backfill, or the
            sink is not idempotent and duplicates are not allowed.
    """
    if start >= stop:
        raise ConfigError("--to", f"{stop.isoformat()} is not after --from {start.isoformat()}")
    backfill = source_hook(pipeline, "backfill", "backfill(start, stop)", "KafkaSource")
    # Every sink: a fan-out's or route's branches end in sinks of their own.
    sinks = [pipeline.sink_, *(branch.sink_ for _, branch in pipeline.branches)]
    for sink in sinks:
        if sink is not None and not sink.idempotent and not allow_duplicates:
            raise ConfigError(
                "--allow-duplicates",
                f"sink {sink.name!r} is not idempotent: records written before would be "
                "written twice; use an idempotent sink or pass --allow-duplicates",
            )
    renamed = pipeline.renamed(name or backfill_name(pipeline.name, start, stop))
    return renamed.with_source(backfill(start, stop))


def backfill_name(pipeline: str, start: datetime, stop: datetime) -> str:
    """``<pipeline>.backfill-<start>-<stop>``, the times in UTC to the second."""
    return f"{pipeline}.backfill-{_stamp(start)}-{_stamp(stop)}"


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def instant(text: str) -> datetime:
    """An ISO 8601 time with a timezone, as an argparse ``type``.

    Raises:
        argparse.ArgumentTypeError: Not ISO 8601, or without a timezone.
    """
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31T00:00:00Z)"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no timezone; add one (Z or +01:00) so the window is unambiguous"
        )
    return when
