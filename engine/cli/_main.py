"""The ``riprap`` command: run a pipeline file, run the demo, inspect dead letters and checkpoints.

Every run ends with its report on stdout, a failed run too (the failing step,
the record and the line of your code that raised; ``-v`` shows the whole
traceback). Progress, logs and messages go to stderr. With ``--log-format
json`` every line is one JSON object, the report included.

Exit codes: 0 the run completed or was stopped cleanly; 1 a stage failed (done
records were checkpointed), the checkpoint is damaged or rolled back (see
``riprap checkpoint``), or the dead-letter store a replay reads is missing
or failed; 2 the pipeline or the command line is invalid; 130 the run was
aborted by a second signal.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import TYPE_CHECKING

from riprap._core.errors import ConfigError, EngineError
from riprap.cli._backfill import add_backfill_command
from riprap.cli._checkpoint import add_checkpoint_commands
from riprap.cli._console import console_for
from riprap.cli._demo import run_demo
from riprap.cli._dlq import add_dlq_commands
from riprap.cli._gate import add_gate_commands
from riprap.cli._help import HELP_FORMAT, plain
from riprap.cli._load import load_pipeline as load_pipeline
from riprap.cli._replay import add_replay_command
from riprap.cli._replay import replay_pipeline as replay_pipeline
from riprap.cli._rollback import add_rollback_command
from riprap.cli._runs import EXIT_FAILED, EXIT_USAGE, run_with_report
from riprap.cli._s3 import add_s3_commands
from riprap.cli._workers import add_worker_options, run_supervised, run_worker
from riprap.observability._health import HealthConfig
from riprap.observability._logging import configure_cli_logging

if TYPE_CHECKING:
    from collections.abc import Sequence


def _cmd_run(args: argparse.Namespace) -> int:
    health = (
        HealthConfig(host=args.metrics_host, port=args.metrics_port)
        if args.metrics_port is not None
        else None
    )
    if args.worker is not None:  # started by a supervisor
        return run_worker(args, console_for(args), health)
    if args.workers is not None:
        return run_supervised(args, console_for(args), health)
    pipeline = load_pipeline(args.pipeline)
    return run_with_report(
        pipeline, console=console_for(args), progress=not args.quiet, health=health
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.dir, orders=args.orders, fresh=args.fresh, console=console_for(args))


def version() -> str:
    """The installed riprap's version."""
    return importlib.metadata.version("riprap")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``riprap`` command."""
    parser = argparse.ArgumentParser(
        prog="riprap", description=plain(__doc__ or ""), formatter_class=HELP_FORMAT
    )
    parser.add_argument("--version", action="version", version=f"riprap {version()}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG level; whole tracebacks"
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="console text, or one JSON object per line (logs, progress, the report)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_cmd = commands.add_parser(
        "run",
        help="run a pipeline defined in a Python file",
        description="Run a pipeline defined in a Python file; the report goes to stdout.",
    )
    run_cmd.add_argument("pipeline", help="path/to/file.py[:name] (name defaults to 'pipeline')")
    run_cmd.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    run_cmd.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port"
    )
    run_cmd.add_argument(
        "--metrics-host", default="127.0.0.1", help="interface for the health server"
    )
    add_worker_options(run_cmd)
    run_cmd.set_defaults(handler=_cmd_run)

    demo = commands.add_parser(
        "demo",
        help="run the demo pipeline on synthetic orders",
        description="Run the demo pipeline on synthetic orders, about 1% of them malformed.",
    )
    demo.add_argument("--dir", default="riprap-demo", help="where the demo keeps its files")
    demo.add_argument("--orders", type=int, default=5_000, help="orders to generate")
    demo.add_argument("--fresh", action="store_true", help="delete earlier demo files first")
    demo.set_defaults(handler=_cmd_demo)

    dlq = add_dlq_commands(commands)
    add_replay_command(dlq)

    add_backfill_command(commands)
    add_checkpoint_commands(commands)
    add_gate_commands(commands)
    add_rollback_command(commands)
    add_s3_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``riprap`` command."""
    args = build_parser().parse_args(argv)
    configure_cli_logging(fmt=args.log_format, verbose=args.verbose)
    console = console_for(args)
    try:
        code: int = args.handler(args)
    except ConfigError as error:
        console.error(str(error))
        return EXIT_USAGE
    except EngineError as error:
        console.error(str(error))
        console.traceback(error)
        return EXIT_FAILED
    return code
