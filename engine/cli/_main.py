"""The ``riprap`` command: run a pipeline file, run the demo, inspect dead letters and checkpoints.

Exit codes: 0 the run completed or was stopped cleanly; 1 a stage failed (done
records were checkpointed), the checkpoint is damaged or rolled back (see
``riprap checkpoint``), or the dead-letter store a replay reads is missing
or failed; 2 the pipeline or the command line is invalid; 130 the run was
aborted by a second signal.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import TYPE_CHECKING

from riprap._core.errors import ConfigError, EngineError
from riprap._core.pipeline import Pipeline
from riprap.cli._checkpoint import add_checkpoint_commands
from riprap.cli._demo import run_demo
from riprap.cli._dlq import add_dlq_commands, add_location_arguments
from riprap.cli._locations import location_argument
from riprap.cli._runs import EXIT_FAILED, EXIT_USAGE, run_with_report
from riprap.observability._health import HealthConfig
from riprap.observability._logging import configure_cli_logging
from riprap.observability._redact import DEFAULT_REDACTOR

if TYPE_CHECKING:
    from riprap._core.protocols import Source
    from riprap.deadletters._stores import DeadLetterSink

if TYPE_CHECKING:
    from collections.abc import Sequence


def load_pipeline(spec: str) -> Pipeline:
    """Load ``path/to/file.py[:name]``; ``name`` (default ``pipeline``) may be a factory.

    Raises:
        ConfigError: The file or the name does not exist, or is not a pipeline.
    """
    path, _, attr = spec.partition(":")
    attr = attr or "pipeline"
    try:
        namespace = runpy.run_path(path, run_name="__riprap__")
    except FileNotFoundError:
        raise ConfigError("pipeline file", f"{path!r} does not exist") from None
    if attr not in namespace:
        raise ConfigError("pipeline", f"{path!r} defines no {attr!r}")
    obj = namespace[attr]
    if callable(obj) and not isinstance(obj, Pipeline):
        obj = obj()
    if not isinstance(obj, Pipeline):
        raise ConfigError("pipeline", f"{path}:{attr} is {type(obj).__name__}, not a Pipeline")
    return obj


def _cmd_run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    health = (
        HealthConfig(host=args.metrics_host, port=args.metrics_port)
        if args.metrics_port is not None
        else None
    )
    return run_with_report(pipeline, out=sys.stderr, progress=not args.quiet, health=health)


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.dir, orders=args.orders, fresh=args.fresh, out=sys.stderr)


def _cmd_replay(args: argparse.Namespace) -> int:
    from riprap.cli._dlq import parse_time
    from riprap.cli._locations import default_failed_to, same_store
    from riprap.cli._remote import dead_letter_sink, replay_source
    from riprap.deadletters._stores import DeadLetterFilter

    pipeline = load_pipeline(args.pipeline)
    letters = DeadLetterFilter(
        stage=args.stage,
        error_type=args.error_type,
        reason=args.reason,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
    )
    failed_to = args.failed_to or default_failed_to(args.path)
    if same_store(failed_to, args.path):
        raise ConfigError("--failed-to", f"{failed_to} is the store being replayed")
    replay = replay_pipeline(
        pipeline,
        replay_source(
            args.path, filter=letters, rate_limit=args.rate, endpoint_url=args.endpoint_url
        ),
        dead_letter_sink(failed_to, endpoint_url=args.endpoint_url),
    )
    sys.stderr.write(
        f"replaying {args.path} through {pipeline.name!r} as {replay.name!r}; "
        f"records failing again go to {failed_to}\n"
    )
    try:
        return run_with_report(replay, out=sys.stderr, progress=not args.quiet)
    except ConfigError:
        raise
    except (OSError, ValueError) as error:  # the store failed (a bug in a step is an EngineError)
        sys.stderr.write(f"riprap dlq replay: {DEFAULT_REDACTOR.redact(str(error))}\n")
        return EXIT_FAILED


def replay_pipeline(pipeline: Pipeline, source: Source, failed: DeadLetterSink) -> Pipeline:
    """``pipeline`` fed from dead letters, under its own name so replays resume, not repeat.

    Letters that fail again go to ``failed``, never to the store being replayed.
    """
    return (
        pipeline.renamed(f"{pipeline.name}.replay")
        .with_options(dead_letter=failed)
        .with_source(source)
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``riprap`` command."""
    parser = argparse.ArgumentParser(prog="riprap", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "--log-format", choices=("console", "json"), default="console", help="log line format"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run_cmd = commands.add_parser("run", help="run a pipeline defined in a Python file")
    run_cmd.add_argument("pipeline", help="path/to/file.py[:name] (name defaults to 'pipeline')")
    run_cmd.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    run_cmd.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port"
    )
    run_cmd.add_argument(
        "--metrics-host", default="127.0.0.1", help="interface for the health server"
    )
    run_cmd.set_defaults(handler=_cmd_run)

    demo = commands.add_parser("demo", help="run the demo pipeline on synthetic orders")
    demo.add_argument("--dir", default="riprap-demo", help="where the demo keeps its files")
    demo.add_argument("--orders", type=int, default=5_000, help="orders to generate")
    demo.add_argument("--fresh", action="store_true", help="delete earlier demo files first")
    demo.set_defaults(handler=_cmd_demo)

    dlq = add_dlq_commands(commands)
    replay = dlq.add_parser("replay", help="send dead letters back through a pipeline")
    add_location_arguments(replay)
    replay.add_argument("--pipeline", required=True, help="path/to/file.py[:name] of the fix")
    replay.add_argument("--stage", help="only letters of this stage")
    replay.add_argument("--error-type", help="only this error type")
    replay.add_argument("--reason", help="only this reason")
    replay.add_argument("--since", help="failed at or after (ISO time or 2h)")
    replay.add_argument("--until", help="failed before (ISO time or 2h)")
    replay.add_argument("--rate", type=float, default=None, help="records per second at most")
    replay.add_argument(
        "--failed-to",
        type=location_argument,
        help="where letters that fail again go: a JSON Lines file (default"
        " <path>.replay-failed.jsonl, or <topic|bucket-prefix>.replay-failed.jsonl"
        " here for kafka:// and s3://), kafka://... or s3://...",
    )
    replay.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    replay.set_defaults(handler=_cmd_replay)

    add_checkpoint_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``riprap`` command."""
    args = build_parser().parse_args(argv)
    configure_cli_logging(fmt=args.log_format, verbose=args.verbose)
    try:
        code: int = args.handler(args)
    except ConfigError as error:
        sys.stderr.write(f"riprap: {DEFAULT_REDACTOR.redact(str(error))}\n")
        return EXIT_USAGE
    except EngineError as error:
        sys.stderr.write(f"riprap: {DEFAULT_REDACTOR.redact(str(error))}\n")
        return EXIT_FAILED
    return code
