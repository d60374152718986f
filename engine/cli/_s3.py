"""``riprap s3 requeue``: read a pipeline's quarantined S3 objects again, once they are fixed.

The pipeline is loaded as ``riprap run`` loads it. Its source must offer
``requeue()``, returning a source over its quarantined copies
(:meth:`S3Source.requeue <riprap.connectors.s3.S3Source.requeue>`: the
objects under its ``quarantine_prefix``). The command runs
``pipeline.renamed(name).with_source(source.requeue())``: its own name keeps
its checkpoint apart from the live pipeline's, so a copy read once is not read
again, and a copy added later (or replaced by a repaired one under a new key)
is read by the next requeue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from riprap.cli._console import console_for
from riprap.cli._load import load_pipeline, source_hook
from riprap.cli._runs import run_with_report

if TYPE_CHECKING:
    import argparse

    from riprap._core.pipeline import Pipeline


def add_s3_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``riprap s3 ...`` to the commands."""
    s3 = commands.add_parser(
        "s3", help="S3 tools: requeue quarantined objects", description="S3 tools."
    )
    tools = s3.add_subparsers(dest="s3_command", required=True, metavar="COMMAND")
    cmd = tools.add_parser(
        "requeue",
        help="read a pipeline's quarantined objects again, under a checkpoint name of its own",
        description="Run a pipeline once over the quarantined copies its S3 source keeps "
        "(its quarantine_prefix), under a checkpoint name of its own; the report goes "
        "to stdout.",
    )
    cmd.add_argument("pipeline", help="path/to/file.py[:name] (name defaults to 'pipeline')")
    cmd.add_argument("--name", help="checkpoint name (default <pipeline>.requeue)")
    cmd.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    cmd.set_defaults(handler=run_requeue)


def run_requeue(args: argparse.Namespace) -> int:
    """Run the parsed ``riprap s3 requeue`` command; return the exit code.

    Raises:
        ConfigError: The pipeline's source cannot requeue.
    """
    console = console_for(args)
    pipeline = load_pipeline(args.pipeline)
    requeue = requeue_pipeline(pipeline, name=args.name)
    console.message(f"requeueing the quarantined objects of {pipeline.name!r} as {requeue.name!r}")
    return run_with_report(requeue, console=console, progress=not args.quiet)


def requeue_pipeline(pipeline: Pipeline, *, name: str | None = None) -> Pipeline:
    """``pipeline`` reading its source's quarantined objects, under its own name.

    Raises:
        ConfigError: The pipeline has no source, or its source cannot requeue.
    """
    requeue = source_hook(pipeline, "requeue", "requeue()", "S3Source")
    return pipeline.renamed(name or f"{pipeline.name}.requeue").with_source(requeue())
