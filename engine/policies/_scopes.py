"""Timeout scopes that follow the injected clock and raise :class:`~riprap.policies.StageTimeout`.

With the system clock a :class:`TimeoutScope` is a plain anyio cancel scope.
Any other clock (a :class:`~riprap.testing.VirtualClock` in tests) cannot drive
anyio's deadlines, which read the event loop's real time, so the body runs in
a task group next to a timer task that sleeps on the clock and cancels the
group when it wakes. Both paths have the same semantics: the body is cancelled
at the deadline, and only a cancellation caused by this scope becomes a timeout.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, final

import anyio
import anyio.abc

from riprap._core.clock import SYSTEM_CLOCK, SystemClock
from riprap._core.errors import ConfigError, StageTimeout

from ._marks import copy_attempts

if TYPE_CHECKING:
    from types import TracebackType

    from riprap._core.clock import Clock


def to_seconds(value: float | timedelta) -> float:
    """``value`` in float seconds."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def check_duration(option: str, value: float | timedelta | None, *, zero: bool = False) -> None:
    """Reject a negative (or, unless ``zero``, a zero) duration, naming ``option``.

    Raises:
        ConfigError: If the duration is out of range.
    """
    if value is None:
        return
    seconds = to_seconds(value)
    if seconds < 0 or (seconds == 0 and not zero) or seconds != seconds:
        raise ConfigError(option, f"must be {'>= 0' if zero else '> 0'} seconds, got {value!r}")


@final
class TimeoutScope:
    """An async context manager that cancels its body after ``seconds`` of clock time.

    Create it with :func:`fail_after` (raises :class:`~riprap.policies.StageTimeout`) or
    :func:`move_on_after` (ends the block silently). ``expired`` tells which
    happened. Each scope is entered once.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_cancel_scope",
        "_clock",
        "_fired",
        "_raise",
        "_seconds",
        "_tg",
        "_timer_scope",
        "dependency",
        "expired",
        "kind",
        "stage",
    )

    def __init__(
        self,
        seconds: float | timedelta,
        *,
        clock: Clock,
        raise_on_expiry: bool,
        kind: str = "call",
        stage: str | None = None,
        dependency: str | None = None,
    ) -> None:
        self._seconds = to_seconds(seconds)
        self._clock = clock
        self._raise = raise_on_expiry
        self.kind = kind
        self.stage = stage
        self.dependency = dependency
        self.expired = False
        self._fired = False
        self._cancel_scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._timer_scope = anyio.CancelScope()

    async def __aenter__(self) -> TimeoutScope:
        if isinstance(self._clock, SystemClock):
            self._cancel_scope = anyio.move_on_after(self._seconds)
            self._cancel_scope.__enter__()
            return self
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._timer)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._cancel_scope is not None:
            suppressed = self._cancel_scope.__exit__(exc_type, exc, tb)
            expired = self._cancel_scope.cancelled_caught
            return self._finish(expired=expired, suppressed=suppressed, cause=exc)
        assert self._tg is not None
        self._timer_scope.cancel()
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            suppressed = await self._tg.__aexit__(exc_type, exc, tb)
            return self._finish(
                expired=suppressed and self._fired, suppressed=suppressed, cause=exc
            )
        # Completed or failed on its own: hand the task group nothing, so the
        # body's exception is not wrapped in an exception group.
        await self._tg.__aexit__(None, None, None)
        return False

    def _finish(self, *, expired: bool, suppressed: bool, cause: BaseException | None) -> bool:
        if expired:
            self.expired = True
            if self._raise:
                error = StageTimeout(
                    self._seconds, kind=self.kind, stage=self.stage, dependency=self.dependency
                )
                if cause is not None:
                    copy_attempts(cause, error)  # what a retry inside managed to run
                raise error from None
        return suppressed

    async def _timer(self) -> None:
        with self._timer_scope:
            await self._clock.sleep(self._seconds)
            self._fired = True
            assert self._tg is not None
            self._tg.cancel_scope.cancel()


def fail_after(
    seconds: float | timedelta,
    *,
    clock: Clock | None = None,
    kind: str = "call",
    stage: str | None = None,
    dependency: str | None = None,
) -> TimeoutScope:
    """A scope that cancels its body after ``seconds``, then raises a ``StageTimeout``.

    Use as ``async with fail_after(5, clock=clock): ...``.

    Args:
        seconds: The time limit.
        clock: The clock measuring it (default: the system clock).
        kind: Label carried by the error (``"attempt"``, ``"total"``...).
        stage: Stage name carried by the error.
        dependency: Dependency name carried by the error.

    Raises:
        StageTimeout: When the limit passes before the body finishes.

    .. versionadded:: 0.1
    """
    return TimeoutScope(
        seconds,
        clock=clock or SYSTEM_CLOCK,
        raise_on_expiry=True,
        kind=kind,
        stage=stage,
        dependency=dependency,
    )


def move_on_after(seconds: float | timedelta, *, clock: Clock | None = None) -> TimeoutScope:
    """A scope that cancels its body after ``seconds`` and carries on; check ``expired``.

    .. versionadded:: 0.1
    """
    return TimeoutScope(seconds, clock=clock or SYSTEM_CLOCK, raise_on_expiry=False)
