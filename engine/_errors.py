"""The exception tree of riprap.

::

    EngineError
    ├── ConfigError(ValueError)          a pipeline or option is invalid; raised before running
    ├── PipelineError                    the pipeline stopped: a stage raised a bug
    ├── CheckpointError
    │   └── FencedError                  a stale owner or an older epoch tried to write
    ├── DataError                        permanent, about one record: never retried
    │   └── DecodeError                  a payload could not be decoded
    └── TransientError                   worth retrying (the resilience policies decide)

``DataError`` and ``TransientError`` are raised by user code and connectors; the
engine routes them. Everything else a stage raises is treated as a bug.
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
