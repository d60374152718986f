"""The exception tree of riprap.

::

    EngineError
    ├── ConfigError(ValueError)          a pipeline or option is invalid; raised before running
    ├── PipelineError                    the pipeline stopped: a stage raised a bug
    ├── CheckpointError
    │   ├── FencedError                  a stale owner or an older epoch tried to write
    │   ├── CheckpointIntegrityError     a stored checkpoint is damaged, missing or rolled back
    │   └── StateStoreError              a keyed state store disagrees with the checkpoint
    ├── DataError                        permanent, about one record: never retried
    │   ├── DecodeError                  a payload could not be decoded
    │   ├── MissingKeyError              a keyed step got a record without a key
    │   └── StateValueError              a keyed state value JSON cannot hold
    ├── TransientError                   worth retrying (the resilience policies decide)
    ├── CircuitOpenError                 a circuit breaker refused the call: not a record failure
    ├── BulkheadFullError                a bulkhead's waiting queue is full: never retried
    └── StageTimeout(TimeoutError)       an attempt or a whole call ran out of time (transient)

``DataError`` and ``TransientError`` are raised by user code and connectors; the
engine routes them. ``CircuitOpenError``, ``BulkheadFullError`` and
``StageTimeout`` are raised by the resilience policies (:mod:`riprap.policies`).
Everything else a stage raises is treated as a bug.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable


class EngineError(Exception):
    """Root of every error riprap raises on its own account."""


class ConfigError(EngineError, ValueError):
    """A pipeline definition or option is invalid; the message names the option."""

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        self.problem = problem
        super().__init__(f"{option}: {problem}")


class DataError(EngineError):
    """A permanent problem with one record: retrying cannot help, dead-letter it.

    Args:
        message: What is wrong with the record.
        reason: A short machine-readable reason used for DLQ grouping.
    """

    reason: str = "data_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(DataError):
    """A payload could not be decoded; carries where it came from.

    Args:
        message: Why decoding failed.
        source: File path, topic or object the payload came from.
        line: 1-based line number, when the source is line oriented.
    """

    reason = "decode_error"

    def __init__(
        self, message: str, *, source: str = "", line: int | None = None, partition: str = ""
    ) -> None:
        self.source = source
        self.line = line
        self.partition = partition
        where = source + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {message}" if where else message)


class TransientError(EngineError):
    """A failure worth retrying; ``retry_after`` (seconds) is honoured by retries."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitOpenError(EngineError):
    """A circuit breaker refused the call; the dependency is cut off for now.

    Not a failure of the record: the caller waits, falls back or dead-letters.
    Never retried by :class:`~riprap.policies.Retry`.

    Args:
        breaker: The breaker's name (the dependency it protects).
        remaining: Seconds until the breaker lets probes through again: ``0.0``
            when it is half-open with every probe taken, ``inf`` when forced open.
    """

    def __init__(self, breaker: str, *, remaining: float) -> None:
        self.breaker = breaker
        self.remaining = remaining
        if remaining == float("inf"):
            when = "until it is reset"
        elif remaining > 0:
            when = f"for another {remaining:.3g}s"
        else:
            when = "until a probe completes"
        super().__init__(f"circuit {breaker!r} is open {when}")


class BulkheadFullError(EngineError):
    """A bulkhead had no free slot and its waiting queue was full; never retried.

    Args:
        bulkhead: The bulkhead's name.
        max_concurrent: Its limit on concurrent calls.
        max_waiters: Its limit on waiting callers.
    """

    def __init__(self, bulkhead: str, *, max_concurrent: int, max_waiters: int) -> None:
        self.bulkhead = bulkhead
        self.max_concurrent = max_concurrent
        self.max_waiters = max_waiters
        super().__init__(
            f"bulkhead {bulkhead!r} is full: {max_concurrent} calls running "
            f"and {max_waiters} waiting"
        )


class StageTimeout(EngineError, TimeoutError):
    """A call ran out of time: one attempt (``kind="attempt"``) or all of them (``"total"``).

    A ``TimeoutError``, so it is classified transient: an attempt timeout is
    retried, a total timeout ends the call.

    Args:
        seconds: The timeout that elapsed.
        kind: ``"attempt"`` or ``"total"`` (or any label the caller chose).
        stage: The stage whose call timed out, when known.
        dependency: The dependency that was called, when known.
    """

    def __init__(
        self,
        seconds: float,
        *,
        kind: str = "attempt",
        stage: str | None = None,
        dependency: str | None = None,
    ) -> None:
        self.seconds = seconds
        self.kind = kind
        self.stage = stage
        self.dependency = dependency
        where = "".join(
            f" {label} {name!r}"
            for label, name in (("in stage", stage), ("calling", dependency))
            if name is not None
        )
        super().__init__(f"{kind} timeout of {seconds:g}s exceeded{where}")


class CheckpointError(EngineError):
    """A checkpoint could not be loaded or saved."""


class FencedError(CheckpointError):
    """A checkpoint write came from a stale owner or an older epoch and was refused (I5)."""

    def __init__(self, pipeline: str, *, epoch: int, current_epoch: int, owner: str) -> None:
        self.pipeline = pipeline
        self.epoch = epoch
        self.current_epoch = current_epoch
        self.owner = owner
        super().__init__(
            f"checkpoint for pipeline {pipeline!r} refused: writer {owner!r} holds epoch "
            f"{epoch}, but epoch {current_epoch} has been claimed since"
        )


class CheckpointIntegrityError(CheckpointError):
    """A stored checkpoint cannot be trusted, so the run stops instead of resuming (I5).

    The snapshot is damaged (torn, garbled, its checksum does not match), missing
    although a generation was recorded for it, or older than the generation
    recorded outside the store (the store was rolled back). Resuming would
    silently repeat or skip records, so riprap refuses and says what to do:
    ``riprap checkpoint show``, then ``reset`` or ``set``.

    Attributes:
        where: Where the snapshot is stored (a file, a database and pipeline, a URL).
        problem: What is wrong, in words.
        pipeline: The pipeline whose checkpoint it is.
        expected: The generation recorded outside the store (0: none recorded), or
            ``None`` when the snapshot was not compared with a record.
        found: The stored snapshot's generation; ``None`` when there is none or it
            cannot be read (``damaged`` says which).
        damaged: The stored snapshot exists but cannot be read or verified.
        record: Where ``expected`` is recorded.
        store: The store as the ``riprap checkpoint`` command takes it (for the hint).
    """

    def __init__(
        self,
        where: str,
        problem: str,
        *,
        pipeline: str,
        expected: int | None = None,
        found: int | None = None,
        damaged: bool = False,
        record: str | None = None,
        store: str | None = None,
    ) -> None:
        self.where = where
        self.problem = problem
        self.pipeline = pipeline
        self.expected = expected
        self.found = found
        self.damaged = damaged
        self.record = record
        self.store = store
        super().__init__(self._message())

    def located(
        self, *, expected: int, record: str | None, store: str | None, pipeline: str | None = None
    ) -> CheckpointIntegrityError:
        """The same error with the recorded generation and the way to the store added."""
        return CheckpointIntegrityError(
            self.where,
            self.problem,
            pipeline=self.pipeline if pipeline is None else pipeline,
            expected=expected,
            found=self.found,
            damaged=self.damaged,
            record=record,
            store=store,
        )

    def _message(self) -> str:
        message = f"{self.where}: {self.problem}"
        if self.expected is not None:
            if self.found is not None:
                found = f"generation {self.found}"
            else:
                found = "no readable snapshot" if self.damaged else "no snapshot"
            expected = f"generation {self.expected}" if self.expected else "no generation"
            recorded = f" (recorded in {self.record})" if self.record else ""
            message += f"; expected {expected}{recorded}, found {found}"
        if self.store is not None:
            message += ". " + self._hint(self.store)
        return message

    def _hint(self, store: str) -> str:
        target = f"{store} --pipeline {shlex.quote(self.pipeline)}"
        accept = (
            f"accept what is stored with `riprap checkpoint reset {target} --yes`, "
            if self.found is not None
            else ""
        )
        return (
            "riprap will not resume from an older or unknown position. "
            f"Inspect it with `riprap checkpoint show {target}`; then {accept}"
            f"start from the beginning with `riprap checkpoint reset {target} --wipe --yes`, "
            f"or choose positions with `riprap checkpoint set {target} PARTITION=POSITION`"
        )


class PipelineError(EngineError):
    """The pipeline stopped because a stage raised an unexpected exception (a bug).

    The message names the stage, the source partition and offset of the record,
    and the error, so the crash is actionable. The runtime passes the pipeline's
    redactor as ``redact``, so the message is redacted once, here, and every
    output (``str(error)``, the CLI, the logs, the run report) shows the redacted
    text; ``error`` keeps the original exception for code that handles it.
    """

    def __init__(
        self,
        *,
        pipeline: str,
        stage: str,
        partition: str | None,
        offset: int | None,
        error: BaseException,
        detail: Any = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.stage = stage
        self.partition = partition
        self.offset = offset
        self.error = error
        where = f" at {partition}@{offset}" if partition is not None else ""
        message = (
            f"pipeline {pipeline!r} stopped: stage {stage!r} failed{where}: "
            f"{type(error).__name__}: {error}"
        )
        super().__init__(message if redact is None else redact(message))


class StalledError(EngineError):
    """The run cannot move: every record in flight is kept by steps that wait for more input.

    The source waits for room under ``max_in_flight`` (or ``max_in_flight_bytes``)
    while stages such as a quality gate hold all of those records for an open
    window, so no record can reach them to close it. The run stops with this
    error instead of waiting forever; none of the held records is done, so a
    restart with more room reads them again.

    Attributes:
        stages: The steps that hold the records.
        records: The records in flight.
        bound: The full bound: ``"max_in_flight"`` or ``"max_in_flight_bytes"``.
        limit: Its value.
    """

    def __init__(self, *, stages: tuple[str, ...], records: int, bound: str, limit: int) -> None:
        self.stages = stages
        self.records = records
        self.bound = bound
        self.limit = limit
        names = ", ".join(repr(s) for s in stages)
        one = len(stages) == 1
        super().__init__(
            f"the run cannot go on: all {records} records in flight are held by "
            f"{'step' if one else 'steps'} {names}, waiting for more input, and the source "
            f"waits for room under {bound}={limit} that only {'its' if one else 'their'} "
            f"output would free. Raise {bound} (a filter upstream that drops most records "
            "multiplies the source records a window holds) or make "
            f"{'the step' if one else 'those steps'} hold fewer records"
        )


class PoisonPillError(EngineError):
    """Stands in for the crash of a record quarantined after stopping the run repeatedly.

    Args:
        message: What happened to the record.
        error_type: The type of the exception that stopped the run, when one did
            (its dead letter's ``error_type``).
        traceback: That exception's redacted traceback (its dead letter's).
    """

    def __init__(self, message: str, *, error_type: str = "", traceback: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.traceback = traceback
