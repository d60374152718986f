"""Fallback: a degraded result when the call fails for good or the circuit is open.

The outermost policy. By default it steps in for errors that are the
dependency's fault and will not be retried any more: transient errors after
retries, timeouts, an open circuit, a full bulkhead. A ``DataError`` is the
record's and must reach the dead-letter queue; a bug must stop the pipeline;
neither is hidden behind a fallback unless ``on`` says so. Each use is a
:class:`~riprap.policies.FallbackUsed` event, a record outcome of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from riprap._core.clock import SYSTEM_CLOCK

from ._classify import DEFAULT_CLASSIFIER
from ._events import Emitter, FallbackUsed, PolicyHook

if TYPE_CHECKING:
    from riprap._core.clock import Clock

P = ParamSpec("P")
"""The parameters of the wrapped call (the fallback receives them too)."""
T = TypeVar("T")
"""The result of the wrapped call and of the fallback."""

FallbackFn = Callable[Concatenate[Exception, P], Awaitable[T]]
"""``async def fallback(error, *args, **kwargs) -> T``: the degraded result."""


def falls_back(error: Exception) -> bool:
    """The default ``on`` predicate: true for errors classified transient.

    That covers :class:`~riprap.policies.StageTimeout`, :class:`~riprap.policies.CircuitOpenError`
    and :class:`~riprap.policies.BulkheadFullError` too.
    """
    return DEFAULT_CLASSIFIER.classify(error) == "transient"


def with_fallback(
    fn: Callable[P, Awaitable[T]],
    fallback_fn: FallbackFn[P, T],
    *,
    on: Callable[[Exception], bool] = falls_back,
    emitter: Emitter,
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``fn``, answering with ``fallback_fn(error, *args, **kwargs)`` when ``on(error)``.

    An exception raised by the fallback itself propagates (chained to the original).
    """

    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not on(exc):
                raise
            announce(emitter, exc)
            return await fallback_fn(exc, *args, **kwargs)

    return functools.wraps(fn)(call)


def announce(emitter: Emitter, error: Exception) -> None:
    """Tell the hooks that the fallback's result replaces ``error``."""
    if emitter.hooks:
        emitter.emit(
            FallbackUsed(
                stage=emitter.stage,
                dependency=emitter.dependency,
                at=emitter.clock.monotonic(),
                error=error,
            )
        )


def fallback(
    fallback_fn: FallbackFn[P, T],
    /,
    *,
    on: Callable[[Exception], bool] = falls_back,
    clock: Clock | None = None,
    hooks: Iterable[PolicyHook] = (),
    stage: str | None = None,
    dependency: str | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorator: answer with ``fallback_fn(error, *args, **kwargs)`` when the call fails.

    Example::

        async def cached_price(error: Exception, sku: str) -> Price: ...

        @fallback(cached_price)
        async def price(sku: str) -> Price: ...

    Args:
        fallback_fn: Gives the degraded result; receives the error, then the call's arguments.
        on: Which errors to replace (default: those classified transient).
        clock: Stamps the events.
        hooks: Receive :class:`~riprap.policies.FallbackUsed` events.
        stage: Stage name the events carry.
        dependency: Dependency name the events carry.

    .. versionadded:: 0.1
    """
    emitter = Emitter(hooks, clock=clock or SYSTEM_CLOCK, stage=stage, dependency=dependency)

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        return with_fallback(fn, fallback_fn, on=on, emitter=emitter)

    return decorate
