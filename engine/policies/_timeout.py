"""Timeout policies that follow the injected clock and raise :class:`~riprap.policies.StageTimeout`.

A timeout policy layer (:class:`TimeoutLayer`) with the system clock puts its
calls' deadlines under one shared timer (see ``_deadlines``); with any other
clock (a :class:`~riprap.testing.VirtualClock` in tests) each call runs in a
:class:`TimeoutScope` (see ``_scopes``). Both cancel the call at the deadline,
and again until it ends; only a cancellation caused by the deadline becomes a
timeout. With a grace period the call is sheltered instead (see ``_shelter``).
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, final

from riprap._core.clock import SYSTEM_CLOCK, SystemClock
from riprap._core.errors import StageTimeout

from ._deadlines import Deadline, DeadlineWatch
from ._events import Emitter
from ._marks import copy_attempts
from ._scopes import TimeoutScope as TimeoutScope
from ._scopes import check_duration as check_duration
from ._scopes import fail_after as fail_after
from ._scopes import move_on_after as move_on_after
from ._scopes import to_seconds as to_seconds
from ._shelter import Shelter, sheltered

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterable
    from datetime import timedelta

    from riprap._core.clock import Clock

    from ._events import PolicyHook

P = ParamSpec("P")
"""The parameters of the wrapped call."""
T = TypeVar("T")
"""The result of the wrapped call."""


@final
class TimeoutLayer:
    """The timeout policy of a stack: every call through ``wrap(fn)`` gets its own deadline.

    Without ``grace`` the call runs in its caller's task, which is cancelled at
    the deadline and again every ``RECANCEL_EVERY`` seconds until the call
    ends (a call that swallows one cancellation gets the next). With ``grace``
    the call runs sheltered in a task of its own (see ``_shelter``) and is
    abandoned if it still runs ``grace`` seconds after the deadline.
    """

    __slots__ = ("clock", "dependency", "emitter", "grace", "kind", "seconds", "shelter", "stage")

    def __init__(
        self,
        seconds: float | timedelta,
        *,
        clock: Clock,
        kind: str,
        stage: str | None = None,
        dependency: str | None = None,
        grace: float | timedelta | None = None,
        shelter: Shelter | None = None,
        emitter: Emitter | None = None,
    ) -> None:
        check_duration(f"{kind} timeout", seconds)
        check_duration(f"{kind} timeout grace", grace, zero=True)
        self.seconds = to_seconds(seconds)
        self.clock = clock
        self.kind = kind
        self.stage = stage
        self.dependency = dependency
        self.grace = None if grace is None else to_seconds(grace)
        self.shelter = shelter if shelter is not None or grace is None else Shelter()
        self.emitter = emitter or Emitter((), clock=clock, stage=stage, dependency=dependency)

    def wrap(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """``fn`` bounded by this timeout."""
        if self.grace is not None:
            assert self.shelter is not None
            return sheltered(
                fn,
                seconds=self.seconds,
                grace=self.grace,
                clock=self.clock,
                shelter=self.shelter,
                emitter=self.emitter,
                kind=self.kind,
            )
        if self.inline:
            return self._wrap_real(fn)
        return self._wrap_virtual(fn)

    def _wrap_real(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        watch = self.watch()
        current_task = asyncio.current_task
        get_loop = asyncio.get_running_loop

        async def call_real(*args: P.args, **kwargs: P.kwargs) -> T:
            loop = get_loop()
            task = current_task(loop)
            assert task is not None
            cancelling = task.cancelling()
            deadlines = watch.on(loop)
            key = deadlines.start(task)
            try:
                return await fn(*args, **kwargs)
            except asyncio.CancelledError as exc:
                expired = deadlines.expired.get(key)
                if expired is not None:
                    error = self.expired(expired, task, cancelling, exc)
                    if error is not None:
                        raise error from None
                raise
            finally:
                expired = deadlines.stop(key)
                if expired is not None and expired.fired:  # it swallowed them and ended anyway
                    take_back(expired, task)

        return functools.wraps(fn)(call_real)

    @property
    def inline(self) -> bool:
        """Whether calls run in the caller's task under a :meth:`watch` (system clock, no grace)."""
        return self.grace is None and isinstance(self.clock, SystemClock)

    def watch(self) -> DeadlineWatch:
        """A fresh shared timer for the deadlines of one wrapped function (see ``_deadlines``)."""
        return DeadlineWatch(self.seconds)

    def expired(
        self, deadline: Deadline, task: asyncio.Task[Any], cancelling: int, exc: BaseException
    ) -> StageTimeout | None:
        """The timeout replacing ``exc``, a cancellation after ``deadline`` passed, or ``None``.

        Only this deadline's cancellations become a timeout; an outer one (a
        stop, a cancel scope) still counts and ``exc`` must propagate.
        ``cancelling`` is the task's count when the deadline started.
        """
        if take_back(deadline, task) > cancelling:
            return None
        error = StageTimeout(
            self.seconds, kind=self.kind, stage=self.stage, dependency=self.dependency
        )
        copy_attempts(exc, error)
        return error

    def _wrap_virtual(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        seconds, kind, stage, dependency = self.seconds, self.kind, self.stage, self.dependency
        clock = self.clock

        async def call_virtual(*args: P.args, **kwargs: P.kwargs) -> T:
            async with TimeoutScope(
                seconds,
                clock=clock,
                raise_on_expiry=True,
                kind=kind,
                stage=stage,
                dependency=dependency,
            ):
                return await fn(*args, **kwargs)
            raise AssertionError("unreachable: an expired scope raises")  # pragma: no cover

        return functools.wraps(fn)(call_virtual)


def take_back(deadline: Deadline, task: asyncio.Task[Any]) -> int:
    """Withdraw the cancellations the passed ``deadline`` sent ``task``; the count left."""
    deadline.withdraw()
    fired, deadline.fired = deadline.fired, 0
    left = task.cancelling()
    for _ in range(fired):
        left = task.uncancel()
    return left


def timeout(
    seconds: float | timedelta,
    *,
    clock: Clock | None = None,
    kind: str = "call",
    stage: str | None = None,
    dependency: str | None = None,
    grace: float | timedelta | None = None,
    shelter: Shelter | None = None,
    hooks: Iterable[PolicyHook] = (),
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorator: each call of the async function gets ``seconds`` before it is cancelled.

    A call that ignores the cancellation is cancelled again every 50 ms. With
    ``grace``, each call runs in a task of its own and is abandoned (left to
    ``shelter``, logged, reported to ``hooks`` as
    :class:`~riprap.policies.CallAbandoned`) if it still runs ``grace`` seconds
    after the deadline.

    Raises:
        StageTimeout: From the decorated function, when a call runs out of time.
        ConfigError: Here, if ``seconds`` is not positive or ``grace`` is negative.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       Cancels again until the call ends; ``grace``, ``shelter`` and ``hooks``.
    """
    clock = clock or SYSTEM_CLOCK
    layer = TimeoutLayer(
        seconds,
        clock=clock,
        kind=kind,
        stage=stage,
        dependency=dependency,
        grace=grace,
        shelter=shelter,
        emitter=Emitter(hooks, clock=clock, stage=stage, dependency=dependency),
    )
    return layer.wrap
