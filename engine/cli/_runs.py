"""A run from the command line: live progress, the closing report, the exit code."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from riprap._core.errors import ConfigError
from riprap._runtime.run import hold_signals, ignore_signals, run
from riprap.cli._console import Console

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap._core.pipeline import Pipeline
    from riprap.observability._health import HealthConfig
    from riprap.observability._report import RunReport

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 130


def run_with_report(
    pipeline: Pipeline,
    *,
    console: Console | None = None,
    progress: bool = True,
    health: HealthConfig | None = None,
    out: TextIO | None = None,
    after: Callable[[RunReport], None] | None = None,
) -> int:
    """Run with signals and live progress, print the report, return the exit code.

    Every run that started ends with its report on stdout, a failed one too:
    the failing step, the record's position and the line of the user's code
    that raised (the whole traceback with ``-v``). A failure before the run
    starts (a damaged checkpoint, a source that cannot open) has no report:
    its error, the user's frame if any, goes to stderr. ``out`` (without
    ``console``) is where a plain-text report goes instead of stdout;
    ``after`` is called with the report once it is printed.

    The command ends with the run, so SIGINT and SIGTERM are handled from here
    until the process exits: the first stops the run, a later one aborts it
    (exit 130), and one after the run ended changes nothing (the exit code is
    the run's) instead of killing the process while it prints the report.

    Raises:
        ConfigError: The pipeline is invalid.
    """
    console = console or Console(out=out)
    hold_signals()
    printer = console.progress(pipeline.name) if progress else None
    try:
        report = run(
            pipeline,
            progress=printer,
            progress_interval=0.5 if printer else 1.0,
            health=health,
            check=False,
        )
    except ConfigError:
        raise
    except Exception as error:  # the run did not start: there is no report
        if printer:
            printer.close()  # the message starts on a line of its own
        console.crash(error, pipeline.options.redactor)
        return EXIT_FAILED
    finally:
        ignore_signals()  # the run is over
        if printer:
            printer.close()  # the report starts on a line of its own
    console.report(report)
    if after is not None:
        after(report)
    return exit_code(report)


def exit_code(report: RunReport) -> int:
    """The process exit code for a finished run."""
    if report.outcome == "failed":
        return EXIT_FAILED
    if report.outcome == "aborted":
        return EXIT_ABORTED
    return EXIT_OK
