"""What happened in a run, as log lines: start, end, failure, breakers, dead letters, retries.

One structured line per event on the ``riprap.events`` logger, carrying
``pipeline``, ``stage``, ``partition``, ``offset`` and ``trace_id`` as
``extra`` fields whenever they are known (the JSON formatter copies them into
the object). Every message is redacted here with the pipeline's redactor,
whatever formatter the application installs, and never holds a record value.
Dead letters and retries can come by the thousand: they are rate-limited
(:class:`LineBudget`), the lines held back counted in one summary line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, final

from riprap._core.errors import PipelineError
from riprap.policies import CircuitState, CircuitStateChanged, RetryScheduled

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from riprap._core.clock import Clock
    from riprap.deadletters._envelope import DeadLetter
    from riprap.deadletters._stores import DeadLetterSink
    from riprap.observability._redact import Redactor
    from riprap.observability._report import RunReport
    from riprap.policies import PolicyEvent

log = logging.getLogger("riprap.events")

LINES_PER_INTERVAL = 10
"""Dead-letter (and, separately, retry) lines logged per interval before the rest are counted."""
INTERVAL = 60.0
"""Seconds of the pipeline clock over which :data:`LINES_PER_INTERVAL` applies."""
MAX_POSITIONS = 10
"""Partitions whose position the start line names (a topic may have hundreds)."""


@final
class LineBudget:
    """The first ``burst`` lines of each ``interval`` pass; the rest are counted for a summary.

    Args:
        clock: The pipeline's clock (``monotonic``), injectable for tests.
        burst: Lines allowed per interval.
        interval: Seconds per interval.
    """

    __slots__ = ("_started", "_used", "burst", "clock", "held_back", "interval")

    def __init__(self, clock: Clock, *, burst: int, interval: float) -> None:
        self.clock = clock
        self.burst = burst
        self.interval = interval
        self.held_back = 0
        self._started: float | None = None
        self._used = 0

    def take(self) -> tuple[bool, int]:
        """Whether a line may be logged now, and how many were held back in the interval just ended.

        The count is returned once, by the first call after its interval ended
        (then log a summary), and is otherwise 0.
        """
        now = self.clock.monotonic()
        ended = 0
        if self._started is None or now - self._started >= self.interval:
            ended, self.held_back = self.held_back, 0
            self._started, self._used = now, 0
        if self._used < self.burst:
            self._used += 1
            return True, ended
        self.held_back += 1
        return False, ended

    def drain(self) -> int:
        """Lines held back and not yet summarised (at the end of a run)."""
        held, self.held_back = self.held_back, 0
        return held


@final
class RunLog:
    """Logs the events of one run; also a policy hook (retries, breaker changes).

    Args:
        pipeline: The pipeline's name, on every line.
        redactor: The pipeline's redactor, applied to every message.
        clock: The pipeline's clock, for the rate limits.
        burst: Dead-letter and retry lines per ``interval``, each.
        interval: Seconds of the rate limits.
    """

    def __init__(
        self,
        pipeline: str,
        redactor: Redactor,
        clock: Clock,
        *,
        burst: int = LINES_PER_INTERVAL,
        interval: float = INTERVAL,
    ) -> None:
        self.pipeline = pipeline
        self.redactor = redactor
        self.letters = LineBudget(clock, burst=burst, interval=interval)
        self.retries = LineBudget(clock, burst=burst, interval=interval)

    def emit(self, level: int, message: str, **context: Any) -> None:
        """One redacted line with ``pipeline`` and whatever of the context is known."""
        extra = {"pipeline": self.pipeline}
        extra.update({name: value for name, value in context.items() if value is not None})
        log.log(level, "%s", self.redactor.redact(message), extra=extra)

    def started(self, epoch: int, positions: dict[str, int]) -> None:
        """The run claimed the pipeline and is about to read."""
        shown = sorted(positions.items())[:MAX_POSITIONS]
        where = ", ".join(f"{p}@{o}" for p, o in shown) or "the beginning"
        if len(positions) > MAX_POSITIONS:
            where += f" and {len(positions) - MAX_POSITIONS} more partitions"
        self.emit(logging.INFO, f"pipeline {self.pipeline} started (start #{epoch}) from {where}")

    def ended(self, report: RunReport, error: BaseException | None) -> None:
        """The run's final line: how it ended and its counts, or what failed it."""
        self._summarise("dead letters", self.letters.drain())
        self._summarise("retries", self.retries.drain())
        counts = (
            f"{report.records_in} read, {report.records_out} written, {report.dropped} dropped, "
            f"{sum(report.dead_lettered.values())} dead-lettered in {report.duration:.1f}s"
        )
        if report.outcome != "failed" or error is None:
            level = logging.INFO if report.outcome in ("completed", "stopped") else logging.WARNING
            self.emit(level, f"pipeline {self.pipeline} {report.outcome}: {counts}")
            return
        context: dict[str, Any] = {}
        if isinstance(error, PipelineError):
            context = {"stage": error.stage, "partition": error.partition, "offset": error.offset}
            cause = error.error
        else:
            cause = error
        self.emit(
            logging.ERROR,
            f"pipeline {self.pipeline} failed: {type(cause).__name__}: {cause} ({counts})",
            **context,
        )

    def __call__(self, event: PolicyEvent) -> None:
        """A policy hook: breaker changes always, retries within their budget."""
        if isinstance(event, CircuitStateChanged):
            opened = event.new in (CircuitState.OPEN, CircuitState.FORCED_OPEN)
            self.emit(
                logging.WARNING if opened else logging.INFO,
                f"breaker {event.dependency} {event.old} -> {event.new} ({event.reason})",
                stage=event.stage,
            )
        elif isinstance(event, RetryScheduled):
            allowed, held = self.retries.take()
            self._summarise("retries", held)
            if allowed:
                error = event.error
                self.emit(
                    logging.INFO,
                    f"retry of {event.stage} after attempt {event.attempt} in "
                    f"{event.delay:.3g}s: {type(error).__name__}: {error}",
                    stage=event.stage,
                )

    def dead_lettered(self, letters: Iterable[DeadLetter]) -> None:
        """Letters made durable: quarantines always, the others within their budget."""
        for letter in letters:
            context = {
                "stage": letter.stage,
                "partition": letter.partition,
                "offset": letter.offset,
                "trace_id": letter.trace_id or _trace_id(letter),
            }
            if letter.reason == "crash_loop":
                self.emit(
                    logging.ERROR,
                    f"quarantined a record that stopped the pipeline {letter.attempts} "
                    f"times: {letter.error_type}: {letter.message}",
                    **context,
                )
                continue
            allowed, held = self.letters.take()
            self._summarise("dead letters", held)
            if allowed:
                self.emit(
                    logging.WARNING,
                    f"dead-lettered ({letter.reason}) at {letter.stage}: "
                    f"{letter.error_type}: {letter.message}",
                    **context,
                )

    def _summarise(self, what: str, held: int) -> None:
        if held:
            self.emit(logging.WARNING, f"{held} more {what} not logged (rate limit)")


@final
class LoggedDeadLetters:
    """A dead-letter sink that logs each letter once its write is durable (see :class:`RunLog`)."""

    def __init__(self, inner: DeadLetterSink, run_log: RunLog) -> None:
        self.inner = inner
        self.run_log = run_log
        self.name = inner.name

    async def open(self) -> None:
        await self.inner.open()

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        await self.inner.write(letters)
        self.run_log.dead_lettered(letters)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _trace_id(letter: DeadLetter) -> str | None:
    """The trace id of a letter's W3C ``traceparent`` header, if it has one."""
    for name, encoding, data in letter.headers:
        if name == "traceparent" and encoding == "utf-8":
            parts = data.split("-")
            if len(parts) == 4 and len(parts[1]) == 32:
                return parts[1]
    return None
