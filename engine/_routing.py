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
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal, final

import anyio

from ._deadletter import DeadLetter
from ._errors import DataError, EngineError, PipelineError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._acks import Ack
    from ._clock import Clock
    from ._dlq_sinks import DeadLetterSink
    from ._records import Batch, Record
    from ._redact import Redactor
    from .policies._classify import Classifier

log = logging.getLogger("riprap.dlq")

OnError = Literal["dlq", "stop"]

DLQ_WRITE_ATTEMPTS = 5
"""Attempts at a dead-letter write before the run stops (the position never moves past it)."""

DLQ_WRITE_BACKOFF = 0.2
"""First pause between dead-letter write attempts, doubled each time."""


class DeadLetterWriteError(EngineError):
    """The dead-letter sink could not be written; the run stops without losing the records."""


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
        self._pending: list[tuple[DeadLetter, Ack]] = []

    @property
    def dead_lettered(self) -> int:
        """Records durably dead-lettered so far."""
        return sum(self.counts.values())

    def handle(self, step_id: str, batch: Batch, index: int, value: Any, error: Exception) -> None:
        """Queue ``batch.items[index]`` for the DLQ, or raise :class:`PipelineError`."""
        reason = self._reason(step_id, error)
        if reason is None:
            partition, offset = batch.position(index)
            raise PipelineError(
                pipeline=self.pipeline,
                stage=step_id,
                partition=partition,
                offset=offset,
                error=error,
            ) from error
        self.dead_letter_record(step_id, batch.ack, _original(batch, index), error, reason)

    def dead_letter_record(
        self,
        step_id: str,
        ack: Ack,
        record: Record | None,
        error: BaseException,
        reason: str,
        *,
        attempts: int = 1,
    ) -> None:
        """Queue one record for the DLQ; its ack stays retained until the write is durable."""
        now = self.clock.time()
        letter = DeadLetter.create(
            pipeline=self.pipeline,
            stage=step_id,
            error=error,
            reason=reason,
            record=record,
            source=self.source,
            attempts=max(attempts, getattr(error, "attempts", 1)),
            first_failure_at=now,
            last_failure_at=now,
            config_hash=self.config_hash,
            redactor=self.redactor,
        )
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
                )
                await self.clock.sleep(delay)
                delay *= 2

    def _reason(self, step_id: str, error: Exception) -> str | None:
        if self.dead_letter is None or self.on_error.get(step_id, "dlq") == "stop":
            return None
        if isinstance(error, DataError):
            return error.reason
        if self.classifier.classify(error) == "transient":
            return "retries_exhausted"
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
