"""The fused happy path of a policy stack: every layer in one frame while all of them are idle.

A layered stack costs a coroutine frame per layer, and each timeout looks up
the running loop and task on its own (on CPython 3.11 ``get_running_loop``
makes a ``getpid`` system call). Most calls find every layer idle: the
breaker closed, a bulkhead slot free. For them :func:`fuse` runs the layers
inline, outermost first, in one frame, looking the task up once:

    fallback -> total timeout -> retry -> bulkhead -> breaker -> attempt timeout -> call

Each block does what its layer does, with the layer's own helpers for
everything past the happy path (a timeout's expiry, a failed permit, a
retry, the fallback). The moment a layer is not idle when a call starts
(breaker not closed, bulkhead full or with waiters), the call takes the
layered chain instead; and once a first attempt fails, the retries go
through the layered admission and attempt timeout, as they do in the chain.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from riprap._core.clock import monotonic_of

from ._breaker import PERMIT, CallPermit, failed
from ._deadlines import KEYS
from ._events import CircuitState
from ._fallback import announce
from ._timeout import take_back

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from ._breaker import CircuitBreaker
    from ._bulkhead import Bulkhead
    from ._events import Emitter
    from ._retry import RetryLayer
    from ._timeout import TimeoutLayer

P = ParamSpec("P")
"""The parameters of the wrapped call."""
T = TypeVar("T")
"""The result of the wrapped call."""

_CLOSED = CircuitState.CLOSED


def fuse(
    call: Callable[P, Awaitable[T]],
    layered: Callable[P, Awaitable[T]],
    retried: Callable[P, Awaitable[T]],
    *,
    total: TimeoutLayer | None,
    retry: RetryLayer | None,
    breaker: CircuitBreaker | None,
    bulkhead: Bulkhead | None,
    wait: bool,
    stage: str | None,
    attempt: TimeoutLayer | None,
    fallback: Callable[..., Awaitable[T]] | None,
    fallback_on: Callable[[Exception], bool],
    emitter: Emitter,
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``layered``'s behaviour in one frame while every layer is idle.

    Args:
        call: The innermost call (the attempt timeout around it, if that
            cannot run inline, already applied).
        layered: The whole layered chain, for calls that find a layer busy.
        retried: The layered chain below the retry (admission, attempt
            timeout, call), which retries go through.
        total: The total timeout; it must run inline (``TimeoutLayer.inline``).
        retry: The retry layer.
        breaker: The breaker, checked after the bulkhead.
        bulkhead: The bulkhead.
        wait: Whether the stack waits for an open breaker (``on_open="wait"``).
        stage: The stage events and permits carry.
        attempt: The attempt timeout, when it runs inline.
        fallback: The fallback function.
        fallback_on: Which errors the fallback replaces.
        emitter: Announces the fallback's use.

    ``fused`` is one function of about 100 lines, on purpose: each nested ``try`` is one
    layer, and splitting them into functions would bring back the frames
    this path exists to save.
    """
    total_watch = None if total is None else total.watch()
    attempt_watch = None if attempt is None else attempt.watch()
    timed = total is not None or attempt is not None
    get_loop, current_task = asyncio.get_running_loop, task_lookup()
    cancelled, keys = asyncio.CancelledError, KEYS
    budget = None if retry is None else retry._budget
    now = time.monotonic if retry is None else monotonic_of(retry._clock)

    async def fused(*args: P.args, **kwargs: P.kwargs) -> T:
        if (breaker is not None and breaker._state is not _CLOSED) or (
            bulkhead is not None
            and (bulkhead._in_use >= bulkhead.max_concurrent or bulkhead._waiters)
        ):
            return await layered(*args, **kwargs)  # a layer is busy: let it decide
        # Any: both are set whenever a deadline needs them (``timed``).
        loop: Any = None
        task: Any = None
        cancelling = 0
        if timed:
            loop = get_loop()
            task = current_task(loop)
            cancelling = task.cancelling()
        try:  # fallback
            # A deadline is a key in its loop's pending ones (``_deadlines``), started inline.
            if total_watch is not None:
                last = total_watch.last
                td = last if last is not None and last.loop is loop else total_watch.on(loop)
                total_key = next(keys)
                at = td.now() + td.seconds
                td.pending[total_key] = (at, task, None)
                if td.handle is None:
                    td.handle = td.loop.call_at(at, td.fire)
            try:  # total timeout
                if retry is not None:
                    if budget is not None:
                        budget.deposit()
                    started = now()
                try:  # retry
                    if bulkhead is not None:
                        bulkhead._in_use += 1  # idle: a slot is free, as acquire() would find
                    try:  # bulkhead
                        permit: CallPermit | None = None
                        outer: CallPermit | None = None
                        if breaker is not None:
                            # Closed, as allow() would find it: its permit, one frame less,
                            # stamped with the retry's reading of the same clock (the stack
                            # checked it is the breaker's) taken a moment ago, with no await since.
                            permit = CallPermit(
                                breaker,
                                breaker._generation,
                                started if retry is not None else breaker._now(),
                                False,
                                stage,
                            )
                            if wait:
                                permit.wait = True
                            outer = PERMIT.get()
                            token = PERMIT.set(permit)
                        try:  # breaker
                            if attempt_watch is not None:
                                last = attempt_watch.last
                                ad = (
                                    last
                                    if last is not None and last.loop is loop
                                    else attempt_watch.on(loop)
                                )
                                attempt_key = next(keys)
                                at = ad.now() + ad.seconds
                                ad.pending[attempt_key] = (at, task, None)
                                if ad.handle is None:
                                    ad.handle = ad.loop.call_at(at, ad.fire)
                            try:  # attempt timeout
                                result = await call(*args, **kwargs)
                            except cancelled as exc:
                                if attempt_watch is not None:
                                    expired = ad.expired.get(attempt_key)
                                    if expired is not None:
                                        assert attempt is not None
                                        error = attempt.expired(expired, task, cancelling, exc)
                                        if error is not None:
                                            raise error from None
                                raise
                            finally:
                                if (
                                    attempt_watch is not None
                                    and ad.pending.pop(attempt_key, None) is None
                                ):
                                    expired = ad.stop(attempt_key)
                                    if expired is not None and expired.fired:
                                        take_back(expired, task)  # swallowed, ended anyway
                        except BaseException as exc:
                            if permit is not None:
                                failed(permit, exc, 0.0)
                            raise
                        finally:
                            # A permit left behind is done, which admit() ignores: put
                            # back only a live outer call's (one context write less).
                            if outer is not None and not outer._done:
                                PERMIT.reset(token)
                    finally:
                        if bulkhead is not None:
                            if bulkhead._waiters or bulkhead._in_use <= 0:
                                bulkhead.release()
                            else:
                                bulkhead._in_use -= 1  # as release() would, one frame less
                    if permit is not None and breaker is not None:
                        breaker.succeeded(permit)
                    return result
                except Exception as exc:  # cancellation is a BaseException: never retried
                    if retry is None:
                        raise
                    return await retry.again(retried, args, kwargs, exc, started)
            except cancelled as exc:
                if total_watch is not None:
                    expired = td.expired.get(total_key)
                    if expired is not None:
                        assert total is not None
                        error = total.expired(expired, task, cancelling, exc)
                        if error is not None:
                            raise error from None
                raise
            finally:
                if total_watch is not None and td.pending.pop(total_key, None) is None:
                    expired = td.stop(total_key)
                    if expired is not None and expired.fired:
                        take_back(expired, task)
        except Exception as exc:
            if fallback is None or not fallback_on(exc):
                raise
            announce(emitter, exc)
            return await fallback(exc, *args, **kwargs)

    return functools.wraps(call)(fused)


def task_lookup() -> Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]:
    """``asyncio.current_task(loop)``, without its Python frame where it has one (CPython 3.11).

    There it is ``asyncio.tasks._current_tasks.get(loop)``; later versions
    implement it in C, and it is used as it is.
    """
    current = getattr(asyncio.tasks, "_current_tasks", None)
    if inspect.isfunction(asyncio.current_task) and isinstance(current, dict):
        return current.get
    return asyncio.current_task
