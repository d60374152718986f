"""The exception tree of riprap.

::

    EngineError
    ├── ConfigError(ValueError)          a pipeline or option is invalid; raised before running
    ├── PipelineError                    the pipeline stopped: a stage raised a bug
    ├── CheckpointError
    │   └── FencedError                  a stale owner or an older epoch tried to write
    ├── DataError                        permanent, about one record: never retried
    │   └── DecodeError                  a payload could not be decoded
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

from typing import Any


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


class PipelineError(EngineError):
    """The pipeline stopped because a stage raised an unexpected exception (a bug).

    The message names the stage, the source partition and offset of the record,
    and the error, so the crash is actionable.
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
    ) -> None:
        self.pipeline = pipeline
        self.stage = stage
        self.partition = partition
        self.offset = offset
        self.error = error
        where = f" at {partition}@{offset}" if partition is not None else ""
        super().__init__(
            f"pipeline {pipeline!r} stopped: stage {stage!r} failed{where}: "
            f"{type(error).__name__}: {error}"
        )


class PoisonPillError(EngineError):
    """Stands in for the crash of a record quarantined after stopping the run repeatedly."""
