"""Bulkhead: a limit on concurrent calls, with a bounded or unbounded waiting line.

Separate pipelines or stages get separate bulkheads, so one slow dependency
cannot take every worker. Callers beyond ``max_concurrent`` wait in FIFO
order; with ``max_waiters`` set, a caller that finds the line full gets
:class:`~riprap.policies.BulkheadFullError` at once (never retried).
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, final

import anyio

from riprap._core.clock import SYSTEM_CLOCK
from riprap._core.errors import BulkheadFullError, ConfigError

from ._events import Emitter, PolicyHook

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterable
    from types import TracebackType

    from riprap._core.clock import Clock

P = ParamSpec("P")
"""The parameters of the wrapped call."""
T = TypeVar("T")
"""The result of the wrapped call."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadStatistics:
    """A snapshot of a bulkhead.

    Attributes:
        name: The bulkhead's name.
        max_concurrent: Its limit on concurrent calls.
        max_waiters: Its limit on waiting callers (``None``: unbounded).
        in_use: Calls running now.
        waiting: Callers waiting for a slot now.
        rejected: Callers refused since it was created.

    .. versionadded:: 0.1
    """

    name: str
    max_concurrent: int
    max_waiters: int | None
    in_use: int
    waiting: int
    rejected: int


@final
class Bulkhead:
    """Limits concurrent calls to ``max_concurrent``; at most ``max_waiters`` may wait.

    Args:
        max_concurrent: Calls allowed to run at once.
        max_waiters: Callers allowed to wait for a slot; ``None`` for no limit.
        name: Carried by errors, events and statistics.
        clock: Stamps the events.
        hooks: Receive :class:`~riprap.policies.CallRejected` events.

    Use as a decorator (``@bulkhead``), as ``async with bulkhead:`` or with
    :meth:`acquire` and :meth:`release`.

    Raises:
        ConfigError: If ``max_concurrent`` < 1 or ``max_waiters`` < 0.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_emitter",
        "_in_use",
        "_rejected",
        "_waiters",
        "max_concurrent",
        "max_waiters",
        "name",
    )

    def __init__(
        self,
        max_concurrent: int,
        max_waiters: int | None = None,
        *,
        name: str = "bulkhead",
        clock: Clock | None = None,
        hooks: Iterable[PolicyHook] = (),
    ) -> None:
        if max_concurrent < 1:
            raise ConfigError("Bulkhead.max_concurrent", f"must be >= 1, got {max_concurrent!r}")
        if max_waiters is not None and max_waiters < 0:
            raise ConfigError("Bulkhead.max_waiters", f"must be >= 0, got {max_waiters!r}")
        self.max_concurrent = max_concurrent
        self.max_waiters = max_waiters
        self.name = name
        self._emitter = Emitter(hooks, clock=clock or SYSTEM_CLOCK, dependency=name)
        self._in_use = 0
        self._rejected = 0
        self._waiters: deque[anyio.Event] = deque()

    def acquire_nowait(self) -> None:
        """Take a slot if one is free now.

        Raises:
            anyio.WouldBlock: If every slot is taken (or others are already waiting).
        """
        if self._in_use >= self.max_concurrent or self._waiters:
            raise anyio.WouldBlock
        self._in_use += 1

    async def acquire(self, *, stage: str | None = None) -> None:
        """Take a slot, waiting in line for one if needed.

        Returns at once (no checkpoint) when a slot is free: the call it guards
        is the checkpoint.

        Raises:
            BulkheadFullError: If every slot is taken and the waiting line is full.
        """
        if self._in_use < self.max_concurrent and not self._waiters:
            self._in_use += 1
            return
        if self.max_waiters is not None and len(self._waiters) >= self.max_waiters:
            self._reject(stage)
        waiter = anyio.Event()
        self._waiters.append(waiter)
        try:
            await waiter.wait()
        except BaseException:
            if waiter.is_set():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; the longest waiter, if any, takes it over."""
        if self._waiters:
            self._waiters.popleft().set()  # hand over: in_use is unchanged
        elif self._in_use > 0:
            self._in_use -= 1
        else:
            raise RuntimeError(f"bulkhead {self.name!r} released more often than acquired")

    def _reject(self, stage: str | None) -> NoReturn:
        self._rejected += 1
        error = BulkheadFullError(
            self.name, max_concurrent=self.max_concurrent, max_waiters=self.max_waiters or 0
        )
        self._emitter.rejected(error, stage=stage, reason="bulkhead_full")
        raise error

    def add_hook(self, hook: PolicyHook) -> None:
        """Send this bulkhead's events to ``hook`` too (no-op if already registered)."""
        self._emitter.add(hook)

    def remove_hook(self, hook: PolicyHook) -> None:
        """Stop sending events to ``hook``."""
        self._emitter.remove(hook)

    def statistics(self) -> BulkheadStatistics:
        """A snapshot of the slots in use and the callers waiting."""
        return BulkheadStatistics(
            name=self.name,
            max_concurrent=self.max_concurrent,
            max_waiters=self.max_waiters,
            in_use=self._in_use,
            waiting=len(self._waiters),
            rejected=self._rejected,
        )

    def wrap(
        self, fn: Callable[P, Awaitable[T]], /, *, stage: str | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        """``fn`` run inside a slot of this bulkhead."""

        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            await self.acquire(stage=stage)
            try:
                return await fn(*args, **kwargs)
            finally:
                self.release()

        return functools.wraps(fn)(call)

    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorator form of :meth:`wrap`."""
        return self.wrap(fn)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Bulkhead({self.name!r}, in_use={self._in_use}/{self.max_concurrent})"
