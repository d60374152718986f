"""What the ``riprap`` command prints: results on stdout, messages and progress on stderr.

With ``--log-format json`` every line the command writes is one JSON object in
the shape of riprap's JSON logs (``ts``, ``level``, ``logger``, ``message``):
progress lines carry the counts, the run report is one object with the whole
report under ``report``. Every message is redacted before it is written.
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, TextIO, final

import orjson

from riprap.cli._progress import ProgressPrinter
from riprap.observability._failure import describe_failure
from riprap.observability._redact import DEFAULT_REDACTOR

if TYPE_CHECKING:
    import argparse

    from riprap.observability._redact import Redactor
    from riprap.observability._report import RunReport
    from riprap.observability._statistics import RunStatistics

PROGRESS_EVERY = 10.0
"""Seconds between JSON progress lines (a terminal's text line is redrawn more often)."""


@final
class Console:
    """The command's output streams and format, chosen once from the command line.

    Args:
        json: Write every line as a JSON object.
        verbose: Show whole tracebacks (``riprap -v``).
        out: Where results and the run report go (default: ``sys.stdout`` at write time).
        err: Where messages and progress go (default: ``sys.stderr`` at write time).
        redactor: Cleans every message.
    """

    def __init__(
        self,
        *,
        json: bool = False,
        verbose: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
        redactor: Redactor = DEFAULT_REDACTOR,
    ) -> None:
        self.json = json
        self.verbose = verbose
        self._out = out
        self._err = err
        self.redactor = redactor

    @property
    def out(self) -> TextIO:
        """The results stream."""
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        """The messages stream."""
        return self._err or sys.stderr

    def message(self, text: str, *, level: str = "info", **fields: Any) -> None:
        """One message on stderr, for the user watching the command (redacted)."""
        self._write(self.err, text, level=level, logger="riprap.cli", **fields)

    def error(self, text: str, *, command: str = "") -> None:
        """Why the command failed, ``riprap [command]: ...`` on stderr (redacted)."""
        prefix = f"riprap {command}: " if command else "riprap: "
        self._write(self.err, text, level="error", logger="riprap.cli", prefix=prefix)

    def result(self, text: str, **fields: Any) -> None:
        """One line of the command's result on stdout (redacted)."""
        self._write(self.out, text, level="info", logger="riprap.cli", **fields)

    def report(self, report: RunReport) -> None:
        """The run report on stdout: text, or one JSON object."""
        if self.json:
            level = "error" if report.outcome == "failed" else "info"
            headline = f"pipeline {report.pipeline}: {report.outcome}"
            event = self._event(headline, level, "riprap.report")
            event["report"] = report.to_dict(verbose=self.verbose)
            self.out.write(orjson.dumps(event, default=str).decode() + "\n")
        else:
            self.out.write(report.format(verbose=self.verbose) + "\n")
        self.out.flush()

    def crash(self, error: BaseException, redactor: Redactor | None = None) -> None:
        """An error that ended a command without a report: its line, the user's frame, -v chain."""
        redact = (redactor or self.redactor).redact
        failure = describe_failure(error, redact)
        text = f"{type(error).__name__}: {redact(str(error))}"
        if self.json:
            self._write(
                self.err,
                text,
                level="error",
                logger="riprap.cli",
                failure=failure.to_dict(verbose=self.verbose),
            )
            return
        lines = [text]
        if failure.frame is not None:
            lines += ["in your code:", *(f"  {x}" for x in failure.frame.format().splitlines())]
        if self.verbose:
            lines.append(failure.traceback.rstrip("\n"))
        else:
            lines.append("(riprap -v shows the whole traceback)")
        self._write(
            self.err, "\n".join(lines), level="error", logger="riprap.cli", prefix="riprap: "
        )

    def traceback(self, error: BaseException) -> None:
        """With ``-v``, ``error``'s whole chain on stderr (redacted)."""
        if self.verbose:
            chain = "".join(traceback.format_exception(error)).rstrip("\n")
            self._write(self.err, chain, level="debug", logger="riprap.cli")

    def progress(self, pipeline: str) -> ProgressPrinter | JsonProgress:
        """The live-progress hook for a run: a redrawn text line, or periodic JSON lines."""
        if self.json:
            return JsonProgress(pipeline, self.err)
        return ProgressPrinter(pipeline, self.err)

    def _write(
        self, stream: TextIO, text: str, *, level: str, logger: str, prefix: str = "", **fields: Any
    ) -> None:
        text = self.redactor.redact(text)
        if self.json:
            line = orjson.dumps({**self._event(text, level, logger), **fields}, default=str)
            stream.write(line.decode() + "\n")
        else:
            stream.write(prefix + text + "\n")
        stream.flush()

    @staticmethod
    def _event(message: str, level: str, logger: str) -> dict[str, Any]:
        return {"ts": time.time(), "level": level, "logger": logger, "message": message}


@final
class JsonProgress:
    """A progress hook writing one JSON line with the run's counts every ``every`` seconds."""

    def __init__(self, pipeline: str, out: TextIO, *, every: float = PROGRESS_EVERY) -> None:
        self.pipeline = pipeline
        self.out = out
        self.every = every
        self._text = ProgressPrinter(pipeline, out)
        self._last_line_at = -every

    def __call__(self, stats: RunStatistics) -> None:
        if stats.elapsed - self._last_line_at < self.every:
            return
        self._last_line_at = stats.elapsed
        event = {
            "ts": time.time(),
            "level": "info",
            "logger": "riprap.progress",
            "message": self._text.format(stats),
            "pipeline": self.pipeline,
            "records_in": stats.records_in,
            "records_out": stats.records_out,
            "dropped": stats.dropped,
            "dead_lettered": stats.dead_lettered,
            "in_flight": stats.in_flight,
            "lag": stats.lag,
            "open_breakers": list(stats.open_breakers),
        }
        self.out.write(orjson.dumps(event, default=str).decode() + "\n")
        self.out.flush()

    def close(self) -> None:
        """Nothing to end: every progress line is complete."""


def console_for(args: argparse.Namespace) -> Console:
    """The output a parsed command line asks for: JSON lines or text, verbose or not."""
    log_format = getattr(args, "log_format", "console")  # absent from a sub-parser alone
    return Console(json=log_format == "json", verbose=getattr(args, "verbose", False))
