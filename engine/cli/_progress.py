"""Live progress for CLI runs: one updating line on a terminal, periodic lines otherwise."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, TextIO, final

if TYPE_CHECKING:
    from riprap.observability._statistics import RunStatistics

CATCH_UP_WINDOW = 60.0
"""Seconds of lag history the catch-up estimate is taken over."""


@final
class ProgressPrinter:
    """A progress hook (see :func:`riprap.run`) that writes to ``out``.

    On a terminal the line is redrawn in place; elsewhere (CI, log files) a
    plain line is written every ``every`` seconds so logs stay readable.
    """

    def __init__(self, pipeline: str, out: TextIO, *, every: float = 10.0) -> None:
        self.pipeline = pipeline
        self.out = out
        self.every = every
        self.tty = out.isatty()
        self._last_line_at = -every
        self._drawn = False
        self._lags: deque[tuple[float, int]] = deque()  # (elapsed, lag) over CATCH_UP_WINDOW

    def __call__(self, stats: RunStatistics) -> None:
        line = self.format(stats)
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
            self._drawn = True
        elif stats.elapsed - self._last_line_at >= self.every:
            self._last_line_at = stats.elapsed
            self.out.write(line + "\n")
        self.out.flush()

    def format(self, stats: RunStatistics) -> str:
        """One line: counts, rate, in flight, checkpoint age, lag and open breakers."""
        rate = stats.records_in / stats.elapsed if stats.elapsed > 0 else 0.0
        age = (
            f"{stats.last_checkpoint_age:.0f}s ago"
            if stats.last_checkpoint_age is not None
            else "none yet"
        )
        line = (
            f"[{self.pipeline}] in {stats.records_in:,}  out {stats.records_out:,}  "
            f"dropped {stats.dropped:,}  dlq {stats.dead_lettered:,}  "
            f"in flight {stats.in_flight:,}  {rate:,.0f}/s  checkpoint {age}"
        )
        if stats.lag is not None:
            line += f"  lag {stats.lag:,}{self._catch_up(stats.elapsed, stats.lag)}"
        if stats.open_breakers:
            line += f"  OPEN: {', '.join(stats.open_breakers)}"
        if stats.records_in == 0 and stats.source.lag == {}:
            # A source that reports lag knows no partition yet: a Kafka group join is
            # the usual wait (seconds, more when a member of the last run timed out).
            line += "  waiting for partitions (joining the consumer group?)"
        return line

    def _catch_up(self, elapsed: float, lag: int) -> str:
        """`` (catch-up ~2m05s)`` at the rate the lag shrank over the last minute, if it did."""
        lags = self._lags
        if not lags or elapsed > lags[-1][0]:
            lags.append((elapsed, lag))
        while len(lags) > 2 and elapsed - lags[1][0] >= CATCH_UP_WINDOW:
            lags.popleft()
        then, before = lags[0]
        if lag == 0 or elapsed - then < 1.0:
            return ""
        shrinking = (before - lag) / (elapsed - then)
        if shrinking <= 0:
            return " (not catching up)"
        return f" (catch-up ~{_duration(lag / shrinking)})"

    def close(self) -> None:
        """End the redrawn line so the report starts on a fresh one."""
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False


def _duration(seconds: float) -> str:
    """``45s``, ``2m05s`` or ``3h20m``."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"
