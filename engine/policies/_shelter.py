"""Sheltered calls: each attempt in a task of its own, so that its caller can walk away.

A cancellation is only a request. A call that catches ``CancelledError`` and
carries on cannot be stopped from outside, and while it runs in its caller's
task the caller is stuck with it: the retry cannot go on, the bulkhead slot
stays taken, a pipeline stop never finishes. So an attempt timeout with a
grace period runs the call in a child task, owned by a :class:`Shelter`, and
waits for it. At the deadline it cancels the child, then cancels it again every
``RECANCEL_EVERY`` seconds (never in a tight loop); if the child is still
running when the grace period ends, the caller abandons it: the attempt counts
as timed out (:class:`~riprap.StageTimeout`), the slot is released, and the
child stays in the shelter, which logs it, counts it, emits
:class:`~riprap.policies.CallAbandoned`, and logs again when it finally ends.
A caller cancelled from outside (a total timeout, a pipeline stop) does the
same with its child: cancel, wait at most the grace period, abandon; once the
shelter is closing (the pipeline's drain time is up) it waits only a few loop
turns.

The child is not in any anyio cancel scope, so a cancelled scope around the
caller does not re-cancel it at every loop turn (that spin is what made a
stop burn a core); the caller shields itself while it waits out the grace.

The child is created before the caller's context changes, so it sees the
caller's context variables (the breaker permit that :func:`admit` re-checks).
It wakes its caller itself as its call ends (not through a done-callback,
which costs a loop turn more), and the caller waits without first giving the
child a turn of its own: a call that waits on I/O costs one loop turn more
than in the caller's task, not three.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, final

import anyio

from riprap._core.clock import SystemClock
from riprap._core.errors import StageTimeout

from ._deadlines import RECANCEL_EVERY, DeadlineWatch
from ._events import CallAbandoned
from ._scopes import move_on_after

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from riprap._core.clock import Clock

    from ._events import Emitter

P = ParamSpec("P")
"""The parameters of the wrapped call."""
T = TypeVar("T")
"""The result of the wrapped call."""

log = logging.getLogger("riprap.policies")

CLOSING_TURNS = 3
"""Event-loop turns a closing shelter gives a cancelled call before abandoning it."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ShelterStatistics:
    """A snapshot of a :class:`Shelter`.

    Attributes:
        abandoned: Calls abandoned since the shelter was created.
        running: Abandoned calls still running now.
        closing: Whether the shelter abandons cancelled calls almost at once.

    .. versionadded:: 0.2
    """

    abandoned: int
    running: int
    closing: bool


@final
class Shelter:
    """Owns the tasks of sheltered calls that their callers abandoned.

    A policy stack has one (a pipeline run shares one among all its stacks).
    It outlives every call it shelters: an abandoned call's task is kept here,
    counted and logged with its stage, until it ends.

    .. versionadded:: 0.2
    """

    __slots__ = ("_abandoned", "abandoned", "closing")

    def __init__(self) -> None:
        self._abandoned: dict[asyncio.Task[Any], tuple[str | None, str | None]] = {}
        self.abandoned = 0
        self.closing = False

    def close(self) -> None:
        """Abandon a cancelled call that does not end within a few loop turns, from now on.

        A pipeline calls this when its drain time is up, so that a stop is not
        held up by the grace periods of calls that ignore it.
        """
        self.closing = True

    @property
    def running(self) -> tuple[asyncio.Task[Any], ...]:
        """The abandoned calls' tasks still running."""
        return tuple(self._abandoned)

    def statistics(self) -> ShelterStatistics:
        """How many calls were abandoned and how many of them still run."""
        return ShelterStatistics(
            abandoned=self.abandoned, running=len(self._abandoned), closing=self.closing
        )

    def abandon(
        self,
        task: asyncio.Task[Any],
        *,
        reason: Literal["timeout", "cancelled"],
        kind: str,
        seconds: float,
        grace: float,
        emitter: Emitter,
    ) -> None:
        """Take over ``task``, whose caller gives up waiting for it: count, log, tell the hooks."""
        stage, dependency = emitter.stage, emitter.dependency
        self._abandoned[task] = (stage, dependency)
        self.abandoned += 1
        task.add_done_callback(self._ended)
        if reason == "timeout":
            why = f"for {grace:g}s after its {seconds:g}s {kind} timeout"
        else:
            why = "after its caller was cancelled"
        log.warning(
            "stage %s: abandoned a call to %s that ignored cancellation %s; its task keeps "
            "running in the background (%d abandoned so far, %d still running)",
            stage or "-",
            dependency or "its dependency",
            why,
            self.abandoned,
            len(self._abandoned),
            extra={"stage": stage, "dependency": dependency},
        )
        if emitter.hooks:
            emitter.emit(
                CallAbandoned(
                    stage=stage,
                    dependency=dependency,
                    at=emitter.clock.monotonic(),
                    kind=kind,
                    timeout=seconds,
                    reason=reason,
                )
            )

    def _ended(self, task: asyncio.Task[Any]) -> None:
        stage, dependency = self._abandoned.pop(task, (None, None))
        log.info(
            "stage %s: an abandoned call to %s ended: %s",
            stage or "-",
            dependency or "its dependency",
            _outcome(task),
            extra={"stage": stage, "dependency": dependency},
        )

    def __repr__(self) -> str:
        return f"Shelter(abandoned={self.abandoned}, running={len(self._abandoned)})"


def _outcome(task: asyncio.Task[Any]) -> str:
    """How a finished task ended, for the log; retrieves its exception."""
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return "returned" if error is None else f"raised {type(error).__name__}"


@final
class _Guard:
    """What a sheltered call's caller needs to cancel, wait out and abandon its child."""

    __slots__ = ("clock", "emitter", "grace", "kind", "seconds", "shelter")

    def __init__(
        self,
        *,
        seconds: float,
        grace: float,
        clock: Clock,
        shelter: Shelter,
        emitter: Emitter,
        kind: str,
    ) -> None:
        self.seconds = seconds
        self.grace = grace
        self.clock = clock
        self.shelter = shelter
        self.emitter = emitter
        self.kind = kind

    def timed_out(self) -> StageTimeout:
        emitter = self.emitter
        return StageTimeout(
            self.seconds, kind=self.kind, stage=emitter.stage, dependency=emitter.dependency
        )

    async def expired(self, child: asyncio.Task[T]) -> T:
        """The deadline passed: cancel until the child ends or the grace is over, then abandon."""
        try:
            ended = await self._outlast(child, self.grace)
        except asyncio.CancelledError:
            await self.cancelled(child)
            raise
        if not ended:
            self._abandon(child, "timeout")
            raise self.timed_out()
        if child.cancelled():
            raise self.timed_out() from None
        return child.result()  # it ignored the cancellation and finished anyway

    async def cancelled(self, child: asyncio.Task[Any]) -> None:
        """The caller is cancelled: cancel the child, wait (shielded) a bounded time, abandon."""
        if child.done():
            _outcome(child)  # retrieve its exception: nobody else will
            return
        with anyio.CancelScope(shield=True):
            if self.shelter.closing:
                ended = await _turns(child, CLOSING_TURNS)
            else:
                ended = await self._outlast(child, self.grace, absorb=True)
        if ended:
            _outcome(child)
        else:
            self._abandon(child, "cancelled")

    def _abandon(self, child: asyncio.Task[Any], reason: Literal["timeout", "cancelled"]) -> None:
        self.shelter.abandon(
            child,
            reason=reason,
            kind=self.kind,
            seconds=self.seconds,
            grace=self.grace,
            emitter=self.emitter,
        )

    async def _outlast(
        self, child: asyncio.Task[Any], grace: float, *, absorb: bool = False
    ) -> bool:
        """Cancel ``child`` every ``RECANCEL_EVERY`` s until it ends (True) or ``grace`` passes.

        With ``absorb`` the caller's own cancellations are held off until then
        (it is cancelled already and re-raises afterwards): the wait stays bounded.
        """
        clock = self.clock
        end = clock.monotonic() + grace
        while not child.done():
            child.cancel()
            left = end - clock.monotonic()
            if left <= 0:
                return False
            try:
                await _wait_done(child, min(RECANCEL_EVERY, left), clock)
            except asyncio.CancelledError:
                if not absorb:
                    raise
        return True


async def _wait_done(child: asyncio.Task[Any], seconds: float, clock: Clock) -> None:
    """Wait until ``child`` ends or ``seconds`` pass on ``clock``."""
    if isinstance(clock, SystemClock):
        await asyncio.wait((child,), timeout=seconds)
        return
    async with move_on_after(seconds, clock=clock):
        await asyncio.wait((child,))


async def _turns(child: asyncio.Task[Any], turns: int) -> bool:
    """Give ``child`` up to ``turns`` loop turns to end after a cancellation."""
    for _ in range(turns):
        if child.done():
            return True
        child.cancel()
        # The caller is cancelled already; the wait is a few turns at most.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
    return child.done()


def sheltered(
    fn: Callable[P, Awaitable[T]],
    *,
    seconds: float,
    grace: float,
    clock: Clock,
    shelter: Shelter,
    emitter: Emitter,
    kind: str,
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``fn`` run in a child task per call, cancelled at ``seconds`` and abandoned after ``grace``.

    Raises (from the returned function):
        StageTimeout: When the call did not end within ``seconds`` (it was
            cancelled, or abandoned after ``grace`` more seconds).
    """
    guard = _Guard(
        seconds=seconds, grace=grace, clock=clock, shelter=shelter, emitter=emitter, kind=kind
    )
    start = fn if inspect.iscoroutinefunction(fn) else _as_coroutine_function(fn)
    if isinstance(clock, SystemClock):
        call = _sheltered_real(start, guard)
    else:
        call = _sheltered_virtual(start, guard)
    return functools.wraps(fn)(call)


def _sheltered_real(
    fn: Callable[P, Coroutine[Any, Any, T]], guard: _Guard
) -> Callable[P, Coroutine[Any, Any, T]]:
    watch = DeadlineWatch(guard.seconds)
    get_loop = asyncio.get_running_loop

    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        loop = get_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        child = loop.create_task(_waking(fn(*args, **kwargs), waiter))
        deadlines = watch.on(loop)
        key = deadlines.start(child, waiter)
        try:
            try:
                await waiter
            finally:
                deadlines.stop(key)
        except asyncio.CancelledError:
            await guard.cancelled(child)
            raise
        if child.done():
            if child.cancelled():  # cancelled at the deadline just as it woke us
                raise guard.timed_out() from None
            return child.result()
        return await guard.expired(child)

    return call


def _sheltered_virtual(
    fn: Callable[P, Coroutine[Any, Any, T]], guard: _Guard
) -> Callable[P, Coroutine[Any, Any, T]]:
    clock = guard.clock

    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        child = asyncio.get_running_loop().create_task(fn(*args, **kwargs))
        try:
            async with move_on_after(guard.seconds, clock=clock):
                await asyncio.wait((child,))
        except asyncio.CancelledError:
            await guard.cancelled(child)
            raise
        if child.done():
            return child.result()
        return await guard.expired(child)

    return call


async def _waking(call: Awaitable[T], waiter: asyncio.Future[None]) -> T:
    """``call``, waking ``waiter`` as it ends: its caller resumes one loop turn later, when the
    task is done (a done-callback would take a turn more)."""
    try:
        return await call
    finally:
        if not waiter.done():
            waiter.set_result(None)


def _as_coroutine_function(
    fn: Callable[P, Awaitable[T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return await fn(*args, **kwargs)

    return call
