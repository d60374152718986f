"""Admission: a call passes its bulkhead, then its circuit breaker, then reaches the dependency.

The breaker is asked last, right before the call, because a permit is only
as good as the moment it was taken. A caller that took a closed-state permit
and then queued for a bulkhead slot (or for a connection of an HTTP pool)
would still call a dependency the breaker has meanwhile cut off; with 100
callers behind ``Bulkhead(10)``, 90 of them did. So:

* a cheap look at the breaker first, outside the bulkhead: an open breaker
  refuses at once (``on_open="raise"``) or holds the caller back without a
  slot (``"wait"``), so a dead dependency does not fill the line;
* then the slot;
* then the permit, taken now: open refuses, half-open admits exactly its
  probes, closed admits. With ``"wait"`` a caller refused here gives its slot
  back and waits for the breaker again.

Code that waits once more before it touches the dependency (a connection
pool, a rate limiter of its own) re-checks once it holds its place, with
:func:`admit_nowait`: if the breaker changed state since the permit was
taken, the call takes a new one or is refused. It must not wait for the
breaker while it holds the place, or the probes (which need a place) could
wait behind callers that wait for the probes: when the re-check would block,
it gives the place back, waits with :func:`admit`, and queues again.

A failed attempt that was a half-open probe, or that waited for the breaker,
carries that on its exception (``_marks``): a retry does not count a probe as
one of the record's attempts and does not charge breaker waits to its deadline.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._breaker import PERMIT, CircuitBreaker, failed, guarded
from ._events import CircuitState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from ._bulkhead import Bulkhead

P = ParamSpec("P")
"""The parameters of the wrapped call."""
T = TypeVar("T")
"""The result of the wrapped call."""

_CLOSED = CircuitState.CLOSED


async def admit() -> None:
    """Wait until the current call may touch its dependency, by its circuit breaker's word now.

    For code that waited after the policies admitted the call (for a
    connection of a pool, a slot of its own limiter): if the breaker changed
    state since, the call takes a new permit, waiting for one while the breaker
    refuses (``on_open="wait"``) or raising. Outside a call behind a breaker
    (a call that has ended counts as none), or when nothing changed, it returns
    at once without yielding. Do not wait here while holding a place a probe
    may need: see :func:`admit_nowait`.

    Raises:
        CircuitOpenError: If the breaker refuses the call now (``on_open="raise"``).

    .. versionadded:: 0.2
    """
    permit = PERMIT.get()
    if permit is not None and not permit._done and not permit.current:
        await permit._breaker._renew(permit)


def admit_nowait() -> None:
    """Check that the current call may touch its dependency now, by its breaker's word now.

    The twin of :func:`admit` for code that holds a place in a queue of its own
    (a connection slot): it never waits. If it would block, give the place back,
    ``await admit()``, then queue again::

        while True:
            await slots.acquire()
            try:
                admit_nowait()
                break
            except anyio.WouldBlock:
                slots.release()
            await admit()

    Raises:
        anyio.WouldBlock: If the breaker refuses the call now and the stack waits
            while it is open (``on_open="wait"``).
        CircuitOpenError: If it refuses the call now (``on_open="raise"``).

    .. versionadded:: 0.2
    """
    permit = PERMIT.get()
    if permit is not None and not permit._done and not permit.current:
        permit._breaker._renew_nowait(permit)


def admission(
    fn: Callable[P, Awaitable[T]],
    *,
    breaker: CircuitBreaker | None,
    bulkhead: Bulkhead | None,
    wait: bool,
    stage: str | None,
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``fn`` behind ``bulkhead`` (if any), then ``breaker`` (if any); see the module docstring."""
    if breaker is None:
        assert bulkhead is not None
        return bulkhead.wrap(fn, stage=stage)
    if bulkhead is None:
        return guarded(fn, breaker, wait=wait, stage=stage)
    if wait:
        return _waiting(fn, breaker, bulkhead, stage)
    return _failing_fast(fn, breaker, bulkhead, stage)


def _failing_fast(
    fn: Callable[P, Awaitable[T]], breaker: CircuitBreaker, bulkhead: Bulkhead, stage: str | None
) -> Callable[P, Coroutine[Any, Any, T]]:
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        if breaker._state is not _CLOSED:
            breaker.check(stage=stage)  # refuse before queueing for a slot
        await bulkhead.acquire(stage=stage)
        try:
            permit = breaker.allow(stage=stage)  # the state now, after the queue
            token = PERMIT.set(permit)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                failed(permit, exc, 0.0)
                raise
            finally:
                PERMIT.reset(token)
        finally:
            bulkhead.release()
        permit.record(None)
        return result

    return functools.wraps(fn)(call)


def _waiting(
    fn: Callable[P, Awaitable[T]], breaker: CircuitBreaker, bulkhead: Bulkhead, stage: str | None
) -> Callable[P, Coroutine[Any, Any, T]]:
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        waited = 0.0
        while True:
            if breaker._state is not _CLOSED and not breaker.admissible(stage=stage):
                clock = breaker.clock
                began = clock.monotonic()
                await breaker.wait_until_admissible(stage=stage)  # without a slot
                waited += clock.monotonic() - began
            await bulkhead.acquire(stage=stage)
            permit = breaker.try_allow(stage=stage)  # the state now, after the queue
            if permit is not None:
                break
            bulkhead.release()  # refused now: wait for the breaker again, slot given back
        permit.wait = True
        token = PERMIT.set(permit)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            failed(permit, exc, waited)
            raise
        finally:
            PERMIT.reset(token)
            bulkhead.release()
        permit.record(None)
        return result

    return functools.wraps(fn)(call)
