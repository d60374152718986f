"""Where a failing record goes: the dead-letter queue, or a stop of the run.

A ``DataError`` (and a transient error whose retries ran out) is dead-lettered
when the pipeline has a dead-letter sink and the step does not say
``on_error="stop"``; anything else is a bug and stops the run with the stage,
partition and offset named. A dead-lettered record keeps its batch's ack
retained until the dead-letter write is durable (I6), and every record that
leaves this way is counted by reason (I7).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn, final

import anyio

from riprap._core.errors import DataError, PipelineError
from riprap.deadletters._envelope import DeadLetter
from riprap.deadletters._guard import (
    LATE_REASON,
    DeadLetterGuard,
    DeadLetterRateError,
    DeadLetterWriteError,
)
from riprap.policies._marks import attempts_of, failure_reason
from riprap.policies._timeout import fail_after

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap._core.clock import Clock
    from riprap._core.options import OnError
    from riprap._core.records import Batch, Record
    from riprap._runtime.acks import Ack
    from riprap.deadletters._stores import DeadLetterSink
    from riprap.observability._redact import Redactor
    from riprap.policies._classify import Classifier

log = logging.getLogger("riprap.dlq")

REASON_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
"""What a dead-letter reason must look like to be a metric label (``fullmatch``)."""
MAX_REASONS = 50
"""Distinct reasons counted per run; later new ones are counted as :data:`OTHER_REASON`."""
OTHER_REASON = "other"
"""The reason counted (and stored in the letter) in place of one that is not a bounded label."""
_REASON_NOTE_CHARS = 200
"""How much of a replaced reason the letter's message keeps (redacted)."""


DLQ_WRITE_ATTEMPTS = 5
"""Attempts at a dead-letter write before the run stops (the position never moves past it)."""

DLQ_WRITE_BACKOFF = 0.2
"""First pause between dead-letter write attempts, doubled each time."""

DLQ_WRITE_TIMEOUT = 30.0
"""Seconds one dead-letter write may take before it counts as failed."""


@final
class _GuardState:
    """Counts of the current window and the current run of dead letters."""

    __slots__ = ("in_a_row", "window_dlq", "window_late", "window_seen")

    def __init__(self) -> None:
        self.window_seen = 0
        self.window_dlq = 0
        self.window_late = 0  # counted apart: a late burst is not a broken dependency
        self.in_a_row = 0


@final
class Router:
    """Routes record failures of one run; see the module docstring."""

    def __init__(
        self,
        *,
        pipeline: str,
        source: str,
        dead_letter: DeadLetterSink | None,
        redactor: Redactor,
        classifier: Classifier,
        clock: Clock,
        config_hash: str,
        on_error: Mapping[str, OnError],
        guard: DeadLetterGuard | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.source = source
        self.dead_letter = dead_letter
        self.redactor = redactor
        self.classifier = classifier
        self.clock = clock
        self.config_hash = config_hash
        self.on_error = on_error
        self.counts: Counter[str] = Counter()
        self.guard = guard
        self.paused = anyio.Event()
        self.paused.set()  # set = not paused
        self._guard_state = _GuardState()
        self._pending: list[tuple[DeadLetter, Ack]] = []
        self._reasons: set[str] = set()
        self._reason_warned = False

    @property
    def dead_lettered(self) -> int:
        """Records durably dead-lettered so far."""
        return sum(self.counts.values())

    def handle(self, step_id: str, batch: Batch, index: int, value: Any, error: Exception) -> None:
        """Queue ``batch.items[index]`` for the DLQ, or raise :class:`PipelineError`."""
        reason = self._reason(step_id, error)
        if reason is None:
            self._stop(step_id, batch, index, error)
        self.dead_letter_record(step_id, batch.ack, _original(batch, index), error, reason)

    def dead_letter_item(
        self,
        step_id: str,
        batch: Batch,
        index: int,
        error: BaseException,
        reason: str | None = None,
    ) -> None:
        """Queue ``batch.items[index]`` for the DLQ on a stage's request (stops without a DLQ)."""
        if self.dead_letter is None:
            self._stop(step_id, batch, index, error)
        if reason is None:
            reason = error.reason if isinstance(error, DataError) else "error"
        self.dead_letter_record(step_id, batch.ack, _original(batch, index), error, reason)

    def _stop(self, step_id: str, batch: Batch, index: int, error: BaseException) -> NoReturn:
        partition, offset = batch.position(index)
        raise PipelineError(
            pipeline=self.pipeline,
            stage=step_id,
            partition=partition,
            offset=offset,
            error=error,
            redact=self.redactor.redact,
        ) from error

    def dead_letter_record(
        self,
        step_id: str,
        ack: Ack,
        record: Record | None,
        error: BaseException,
        reason: str,
        *,
        attempts: int = 0,
        failed_between: tuple[float, float] | None = None,
    ) -> None:
        """Queue one record for the DLQ; its ack stays retained until the write is durable.

        ``failed_between`` gives the first and last failure times when the record
        failed before this run (a crash loop); otherwise both are now.
        """
        now = self.clock.time()
        first, last = failed_between or (now, now)
        label = self._label(step_id, reason)
        letter = DeadLetter.create(
            pipeline=self.pipeline,
            stage=step_id,
            error=error,
            reason=reason,
            record=record,
            source=self.source,
            attempts=max(attempts, attempts_of(error)),
            first_failure_at=first,
            last_failure_at=last,
            config_hash=self.config_hash,
            redactor=self.redactor,
        )
        if label != reason:  # the text stays with the letter, redacted, never in a label
            note = self.redactor.redact(str(reason)[:_REASON_NOTE_CHARS])
            letter = replace(letter, reason=label, message=f"{letter.message} (reason: {note})")
        self._check_guard(step_id, label)
        ack.retain()
        self._pending.append((letter, ack))

    async def flush(self) -> None:
        """Write queued dead letters durably, then release their acks.

        Raises:
            DeadLetterWriteError: The sink kept failing; nothing was released.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        await self._write([letter for letter, _ in pending])
        for letter, ack in pending:
            self.counts[letter.reason] += 1
            ack.release()

    async def _write(self, letters: list[DeadLetter]) -> None:
        assert self.dead_letter is not None
        delay = DLQ_WRITE_BACKOFF
        for attempt in range(1, DLQ_WRITE_ATTEMPTS + 1):
            try:
                async with fail_after(
                    DLQ_WRITE_TIMEOUT,
                    clock=self.clock,
                    kind="dead_letter",
                    stage=self.dead_letter.name,
                ):
                    await self.dead_letter.write(letters)
                return
            except Exception as error:
                if attempt == DLQ_WRITE_ATTEMPTS:
                    raise DeadLetterWriteError(
                        f"dead-letter sink {self.dead_letter.name!r} failed {attempt} times "
                        f"({type(error).__name__}: {self.redactor.redact(str(error))}); "
                        f"stopping so that {len(letters)} record(s) are not lost"
                    ) from error
                log.warning(
                    "dead-letter write failed (%s), attempt %d of %d",
                    type(error).__name__,
                    attempt,
                    DLQ_WRITE_ATTEMPTS,
                    extra={"pipeline": self.pipeline},
                )
                await self.clock.sleep(delay)
                delay *= 2

    def observe_written(self, records: int) -> None:
        """Records reached the sink: they count in the window and end a run of dead letters."""
        if records:
            state = self._guard_state
            state.in_a_row = 0
            self._advance_window(records)

    def _advance_window(self, records: int) -> None:
        state = self._guard_state
        state.window_seen += records
        if self.guard is not None and state.window_seen >= self.guard.window:
            state.window_seen = 0
            state.window_dlq = 0
            state.window_late = 0

    def resume(self) -> None:
        """End a pause of the DLQ-rate guard; counting starts afresh."""
        self._guard_state = _GuardState()
        self.paused.set()

    def _label(self, step_id: str, reason: object) -> str:
        """``reason`` if it may be a metric label, else :data:`OTHER_REASON` (I10).

        A label is an identifier (:data:`REASON_PATTERN`), and a run counts at
        most :data:`MAX_REASONS` distinct ones: a reason built from data (an
        email, an id) would leak it into ``/metrics`` and the report and grow a
        series per value. The first replacement of a run logs a warning that
        names the stage only.
        """
        valid = False
        if isinstance(reason, str):
            if reason in self._reasons:
                return reason
            valid = REASON_PATTERN.fullmatch(reason) is not None
            if valid and len(self._reasons) < MAX_REASONS:
                self._reasons.add(reason)
                return reason
        if not self._reason_warned:
            self._reason_warned = True
            why = (
                f"more than {MAX_REASONS} distinct reasons in this run"
                if valid
                else f"a reason that does not match {REASON_PATTERN.pattern!r}"
            )
            log.warning(
                "stage %r dead-lettered with %s; counted as %r (the reason is kept, redacted, "
                "in the dead letter's message; further such reasons are not logged)",
                step_id,
                why,
                OTHER_REASON,
                extra={"pipeline": self.pipeline, "stage": step_id},
            )
        return OTHER_REASON

    def _check_guard(self, step_id: str, reason: str) -> None:
        guard = self.guard
        if guard is None or reason in guard.exempt_reasons:
            return
        state = self._guard_state
        if reason == LATE_REASON:
            state.window_late += 1
            limit = (guard.late_max_ratio or 1.0) * guard.window
            if guard.late_max_ratio is None or state.window_late <= limit:
                self._advance_window(1)
                return
            why = f"{state.window_late} late of a window of {guard.window} records"
            hint = "The watermark ran ahead (a far-future timestamp? see max_skew)"
            self._trip(step_id, reason, f"{why} (late_max_ratio limit {limit:.0f})", hint)
            return
        state.window_dlq += 1
        state.in_a_row += 1
        limit = guard.max_ratio * guard.window
        if state.window_dlq > limit:
            why = f"{state.window_dlq} of a window of {guard.window} records (limit {limit:.0f})"
        elif state.in_a_row > guard.max_in_a_row:
            why = f"{state.in_a_row} in a row (limit {guard.max_in_a_row})"
        else:
            self._advance_window(1)
            return
        self._trip(step_id, reason, why)

    def _trip(
        self,
        step_id: str,
        reason: str,
        why: str,
        hint: str = "That looks like a bug or a broken dependency, not bad data",
    ) -> None:
        guard = self.guard
        assert guard is not None
        message = (
            f"pipeline {self.pipeline!r}: DLQ-rate guard tripped at stage {step_id!r} "
            f"(last reason {reason!r}): {why} were dead-lettered. {hint}; the records "
            "stay unprocessed for after the fix."
        )
        if guard.action == "pause" and self.paused.is_set():
            log.error(
                "%s Paused until resumed.",
                message,
                extra={"pipeline": self.pipeline, "stage": step_id},
            )
            self.paused = anyio.Event()
            return
        if guard.action == "stop":
            raise DeadLetterRateError(message)

    def _reason(self, step_id: str, error: Exception) -> str | None:
        if self.dead_letter is None or self.on_error.get(step_id, "dlq") == "stop":
            return None
        if isinstance(error, DataError):
            return error.reason
        if self.classifier.classify(error) == "transient":
            return failure_reason(error)  # retries_exhausted only if retries ran
        return None

    async def drop_pending(self) -> None:
        """Forget queued letters after a failure: their acks stay retained, positions stay put."""
        await anyio.lowlevel.checkpoint()
        self._pending.clear()


def _original(batch: Batch, index: int) -> Record | None:
    """The source record behind an item, as consumed."""
    where = batch.locate(index)
    if where is None:
        return None
    source, i = where
    return source.record(i)
