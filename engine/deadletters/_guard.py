"""The dead-letter guard: stops (or pauses) a run whose dead-lettering looks systematic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from riprap._core.errors import ConfigError, EngineError


class DeadLetterWriteError(EngineError):
    """The dead-letter sink could not be written; the run stops without losing the records."""


LATE_REASON = "late"
"""The reason of records behind an event-time window's allowed lateness (counted apart)."""


class DeadLetterRateError(EngineError):
    """Too many records were dead-lettered: a bug or a dead dependency, not bad data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterGuard:
    """Stops the run when dead-lettering looks systematic, like a breaker for the DLQ.

    The window counts records as they finish (written or dead-lettered), so a
    bug that fails every record trips it after ``max_ratio * window`` letters.
    "In a row" is judged as records finish; with many batches in flight it is
    approximate.

    Late records (reason ``late``, from event-time windows) are counted apart:
    a burst of them says the watermark ran ahead (a far-future timestamp, an
    ``out_of_orderness`` too small, a source replaying old data), not that a
    dependency is down, so they never count towards ``max_ratio`` or
    ``max_in_a_row``. They trip the guard only above their own
    ``late_max_ratio``, which is off by default.

    Attributes:
        window: Source records per (tumbling) window.
        max_ratio: Trip when more than this share of a window is dead-lettered.
        max_in_a_row: Trip after this many dead letters with no record written between.
        action: ``"stop"`` the run, or ``"pause"`` the source until
            :meth:`riprap.RunningPipeline.resume` is called.
        exempt_reasons: Reasons that are deliberate, not symptoms (a quality
            gate quarantining a whole window), and never count.
        late_max_ratio: Trip when more than this share of a window is late;
            ``None`` (the default): late records never trip the guard.
    """

    window: int = 1_000
    max_ratio: float = 0.5
    max_in_a_row: int = 100
    action: Literal["stop", "pause"] = "stop"
    exempt_reasons: frozenset[str] = frozenset({"quality_gate"})
    late_max_ratio: float | None = None

    def check(self) -> None:
        """Raise :class:`ConfigError` for an impossible setting."""
        if not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(
                "dlq_guard.window", f"must be a positive integer, got {self.window!r}"
            )
        if not 0 < self.max_ratio <= 1:
            raise ConfigError("dlq_guard.max_ratio", f"must be in (0, 1], got {self.max_ratio!r}")
        if not isinstance(self.max_in_a_row, int) or self.max_in_a_row < 1:
            raise ConfigError(
                "dlq_guard.max_in_a_row", f"must be a positive integer, got {self.max_in_a_row!r}"
            )
        if self.late_max_ratio is not None and not 0 < self.late_max_ratio <= 1:
            raise ConfigError(
                "dlq_guard.late_max_ratio",
                f"must be in (0, 1] or None, got {self.late_max_ratio!r}",
            )
        if self.action not in ("stop", "pause"):
            raise ConfigError("dlq_guard.action", f"must be 'stop' or 'pause', got {self.action!r}")
