"""A run from the command line: live progress, the closing report, the exit code."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from riprap._core.errors import ConfigError, EngineError
from riprap._runtime.run import hold_signals, ignore_signals, run
from riprap.cli._progress import ProgressPrinter

if TYPE_CHECKING:
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
    out: TextIO,
    progress: bool = True,
    health: HealthConfig | None = None,
) -> int:
    """Run with signals and live progress, print the report, return the exit code.

    The command ends with the run, so SIGINT and SIGTERM are handled from here
    until the process exits: the first stops the run, a later one aborts it
    (exit 130), and one after the run ended changes nothing (the exit code is
    the run's) instead of killing the process while it prints the report.
    """
    hold_signals()
    printer = ProgressPrinter(pipeline.name, out) if progress else None
    try:
        report = run(
            pipeline,
            progress=printer,
            progress_interval=0.5 if printer else 1.0,
            health=health,
        )
    except EngineError as error:
        if printer:
            printer.close()
        if isinstance(error, ConfigError):
            raise
        # A PipelineError's message is redacted already; any other error is redacted here.
        out.write(f"error: {pipeline.options.redactor.redact(str(error))}\n")
        return EXIT_FAILED
    except BaseException:
        if printer:
            printer.close()  # the caller's message starts on a line of its own
        raise
    finally:
        ignore_signals()  # the run is over
    if printer:
        printer.close()
    out.write(report.format() + "\n")
    return exit_code(report)


def exit_code(report: RunReport) -> int:
    """The process exit code for a finished run."""
    if report.outcome == "failed":
        return EXIT_FAILED
    if report.outcome == "aborted":
        return EXIT_ABORTED
    return EXIT_OK
