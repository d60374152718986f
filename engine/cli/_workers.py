"""``riprap run --workers N``: the supervisor's side and each worker's side of the command."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from riprap._runtime.run import hold_signals, ignore_signals
from riprap._runtime.workers import (
    SUPERVISOR_ENV,
    run_workers,
    unblock_signals,
    worker_pipeline,
    write_report,
)
from riprap.cli._load import load_pipeline
from riprap.cli._runs import exit_code, run_with_report

if TYPE_CHECKING:
    from riprap.cli._console import Console
    from riprap.observability._health import HealthConfig
    from riprap.observability._report import RunReport

ORPHAN_POLL = 0.5
"""Seconds between a worker's looks at whether its supervisor is still there."""


def add_worker_options(run_cmd: argparse.ArgumentParser) -> None:
    """``--workers N``, and the hidden options the supervisor starts each worker with."""
    run_cmd.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes sharing the input (stateless pipelines; see the docs)",
    )
    run_cmd.add_argument("--worker", help=argparse.SUPPRESS)  # "i/N": this process is worker i
    run_cmd.add_argument("--worker-report", help=argparse.SUPPRESS)  # where its report goes


def worker_of(spec: str) -> tuple[int, int]:
    """``"i/N"`` as ``(i, N)``."""
    index, _, count = spec.partition("/")
    return int(index), int(count)


def run_worker(args: argparse.Namespace, console: Console, health: HealthConfig | None) -> int:
    """Run this process's share as worker ``args.worker``; its report also goes to a file.

    Started with SIGINT/SIGTERM blocked by the supervisor: they are let in once
    the run's handlers hold them, so an early one stops the run gracefully.
    """
    index, count = worker_of(args.worker)
    pipeline = worker_pipeline(load_pipeline(args.pipeline), index, count)
    if health is not None:  # one port per worker: the given one plus the worker's index
        health = replace(health, port=health.port + index if health.port else 0)
    hold_signals()
    unblock_signals()
    # The supervisor's pid as it said it (it may have died before this line: then the
    # parent is already another), else the parent now.
    parent = int(os.environ.get(SUPERVISOR_ENV) or os.getppid())
    threading.Thread(target=_stop_when_orphaned, args=(parent,), daemon=True).start()
    path = args.worker_report

    def report_to_file(report: RunReport) -> None:
        write_report(path, report)

    return run_with_report(
        pipeline,
        console=console,
        progress=False,
        health=health,
        after=report_to_file if path else None,
    )


def _stop_when_orphaned(parent: int) -> None:
    """Stop this worker gracefully (SIGTERM to itself) once its supervisor is gone.

    A supervisor killed outright cannot forward anything; its workers notice
    that they were handed to another parent and drain and checkpoint.
    """
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL)
    os.kill(os.getpid(), signal.SIGTERM)


def run_supervised(args: argparse.Namespace, console: Console, health: HealthConfig | None) -> int:
    """Run ``args.workers`` workers, print their added-up report, return the exit code."""
    pipeline = load_pipeline(args.pipeline)
    hold_signals()  # from here until exit: a late signal cannot kill the report's printing
    try:
        result = run_workers(
            args.pipeline,
            workers=args.workers,
            health=health,
            log_format=args.log_format,
            verbose=args.verbose,
            pipeline=pipeline,
        )
    finally:
        ignore_signals()
    if console.json:
        console.report(result.report)
        console.result("workers", workers=len(result.workers), restarts=list(result.restarts))
    else:
        console.out.write(result.format(verbose=console.verbose) + "\n")
        console.out.flush()
    return exit_code(result.report)
