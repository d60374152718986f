"""Admission: the breaker is asked after the bulkhead, and again by the call itself (admit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from riprap import TransientError
from riprap.policies import (
    BreakerConfig,
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Policies,
    PolicyStack,
    Retry,
    admit,
    admit_nowait,
)

if TYPE_CHECKING:
    from riprap.testing import VirtualClock

pytestmark = pytest.mark.anyio


def make_breaker(clock: VirtualClock) -> CircuitBreaker:
    """A breaker that probes once, a second after it opened."""
    config = BreakerConfig(window_size=1, minimum_calls=1, open_duration=1.0, half_open_probes=1)
    return CircuitBreaker("scores", config, clock=clock)


async def test_admit_refuses_a_call_whose_breaker_opened_while_it_queued(
    clock: VirtualClock,
) -> None:
    """A call admitted while closed is refused by admit() once the breaker has opened."""
    breaker = make_breaker(clock)
    queued = anyio.Event()
    reached: list[int] = []

    async def call(value: int) -> int:
        await queued.wait()  # a connection pool's queue, say
        await admit()
        reached.append(value)
        return value

    wrapped = PolicyStack(Policies(breaker=breaker), clock=clock).wrap(call)
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            await wrapped(1)
        except CircuitOpenError:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        tg.start_soon(attempt)
        await clock.wait_all_tasks_blocked()
        breaker.force_open()
        queued.set()
    assert ["refused"] == outcomes
    assert [] == reached
    assert 1 == breaker.statistics().rejected


async def trip(stack: PolicyStack) -> None:
    """Open the stack's breaker with one failed call."""

    async def failing() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError):
        await stack.wrap(failing)()


async def test_admit_waits_for_the_probe_when_the_stack_waits(clock: VirtualClock) -> None:
    """With on_open="wait", admit() holds a stale call back until the breaker lets it probe."""
    breaker = make_breaker(clock)
    stack = PolicyStack(Policies(breaker=breaker, on_open="wait"), clock=clock)
    queued = anyio.Event()
    outcomes: list[tuple[str, float, CircuitState]] = []

    async def call() -> None:
        await queued.wait()  # a connection pool's queue, say
        try:
            admit_nowait()
        except anyio.WouldBlock:
            outcomes.append(("would block", clock.monotonic(), breaker.state))
        await admit()
        outcomes.append(("sent", clock.monotonic(), breaker.state))

    async with anyio.create_task_group() as tg:
        tg.start_soon(stack.wrap(call))
        await clock.wait_all_tasks_blocked()
        await trip(stack)
        queued.set()
    assert [
        ("would block", 0.0, CircuitState.OPEN),
        ("sent", 1.0, CircuitState.HALF_OPEN),
    ] == outcomes
    assert CircuitState.CLOSED == breaker.state  # the probe succeeded


async def test_admit_outside_a_call_behind_a_breaker_returns_at_once() -> None:
    """Without a breaker permit in the context there is nothing to re-check."""

    async def call() -> str:
        admit_nowait()
        await admit()
        return "sent"

    assert "sent" == await PolicyStack(Policies(bulkhead=Bulkhead(1))).wrap(call)()


async def test_an_open_breaker_refuses_before_the_caller_queues_for_a_slot(
    clock: VirtualClock,
) -> None:
    """With every slot taken and the breaker open, a caller is refused at once, not queued."""
    breaker = make_breaker(clock)
    bulkhead = Bulkhead(1)
    busy = anyio.Event()
    stack = PolicyStack(Policies(breaker=breaker, bulkhead=bulkhead), clock=clock)

    async def slow(value: int) -> int:
        await busy.wait()
        return value

    async with anyio.create_task_group() as tg:
        tg.start_soon(stack.wrap(slow), 1)
        await clock.wait_all_tasks_blocked()
        breaker.force_open()
        with pytest.raises(CircuitOpenError):
            await stack.wrap(slow)(2)
        assert (1, 0) == (bulkhead.statistics().in_use, bulkhead.statistics().waiting)
        busy.set()


def guarded(breaker: CircuitBreaker, clock: VirtualClock) -> PolicyStack:
    """A stack of a retry and ``breaker``: idle calls take its one-frame path."""
    return PolicyStack(Policies(breaker=breaker, retry=Retry(attempts=2)), clock=clock)


async def test_admit_after_a_call_in_the_same_task_returns_at_once(clock: VirtualClock) -> None:
    """A call that has ended is no call: admit() later in its task does not re-check its permit,
    even once its breaker has opened.
    """
    breaker = make_breaker(clock)

    async def call() -> str:
        return "sent"

    assert "sent" == await guarded(breaker, clock).wrap(call)()
    breaker.force_open()
    admit_nowait()
    await admit()
    assert 0 == breaker.statistics().rejected


async def test_admit_in_an_outer_call_after_an_inner_one_checks_the_outer_permit(
    clock: VirtualClock,
) -> None:
    """A call behind one breaker that makes a call behind another, in the same task, gets its
    own permit back when the inner call ends: admit() then re-checks the outer breaker.
    """
    outer_breaker = make_breaker(clock)
    inner_breaker = CircuitBreaker("profiles", clock=clock)

    async def lookup() -> str:
        return "profile"

    inner = guarded(inner_breaker, clock).wrap(lookup)

    async def call() -> str:
        await inner()
        outer_breaker.force_open()
        await admit()  # the outer call's breaker has opened since its permit
        return "sent"

    with pytest.raises(CircuitOpenError):
        await guarded(outer_breaker, clock).wrap(call)()
    assert 1 == outer_breaker.statistics().rejected
