"""Live progress for CLI runs: one updating line on a terminal, periodic lines otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO, final

if TYPE_CHECKING:
    from riprap.observability._statistics import RunStatistics


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
            line += f"  lag {stats.lag:,}"
        if stats.open_breakers:
            line += f"  OPEN: {', '.join(stats.open_breakers)}"
        return line

    def close(self) -> None:
        """End the redrawn line so the report starts on a fresh one."""
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False
