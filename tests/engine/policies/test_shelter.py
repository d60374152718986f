"""Timeouts against calls that ignore cancellation: cancelled again, then abandoned to a shelter."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from riprap.policies import (
    Bulkhead,
    CallAbandoned,
    Policies,
    PolicyEvent,
    PolicyStack,
    ShelterStatistics,
    StageTimeout,
    timeout,
)
from riprap.testing import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap.testing import VirtualClock

pytestmark = pytest.mark.anyio


class Stubborn:
    """A dependency call that swallows its first ``swallow`` cancellations, then obeys.

    It waits for :meth:`release`, which also lets a call that swallows every
    cancellation end, so that no task outlives its test.
    """

    def __init__(self, now: Callable[[], float], *, swallow: float) -> None:
        self.now = now
        self.swallow = swallow
        self.cancelled_at: list[float] = []
        self.ended = anyio.Event()
        self._released = anyio.Event()

    def release(self) -> None:
        """Let every call end."""
        self._released.set()

    async def __call__(self) -> str:
        try:
            while True:
                try:
                    await self._released.wait()
                    return "released"
                except anyio.get_cancelled_exc_class():
                    self.cancelled_at.append(self.now())
                    if len(self.cancelled_at) > self.swallow:
                        raise
        finally:
            self.ended.set()


async def test_a_call_that_swallows_one_cancellation_is_cancelled_again(
    clock: VirtualClock,
) -> None:
    """The attempt timeout cancels again 50 ms later, and the call ends; nothing is abandoned."""
    stubborn = Stubborn(clock.monotonic, swallow=1)
    stack = PolicyStack(Policies(attempt_timeout=1.0, attempt_grace=1.0), clock=clock)
    with pytest.raises(StageTimeout):
        await stack.wrap(stubborn)()
    assert pytest.approx([1.0, 1.05]) == stubborn.cancelled_at
    assert stubborn.ended.is_set()
    assert 0 == stack.statistics().abandoned_calls


async def test_inline_timeout_cancels_again_a_call_that_swallowed_the_first() -> None:
    """Without a shelter, on the real clock, a call that swallows one cancellation gets a second."""
    stubborn = Stubborn(time.monotonic, swallow=1)
    with anyio.fail_after(5), pytest.raises(StageTimeout):
        await timeout(0.02)(stubborn)()
    assert 2 == len(stubborn.cancelled_at)
    gap = stubborn.cancelled_at[1] - stubborn.cancelled_at[0]
    assert pytest.approx(0.05, abs=0.04) == gap  # cancelled again on a timer, not spinning


async def test_a_call_that_swallows_every_cancellation_is_abandoned_after_the_grace(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """After the grace the attempt times out, its slot is free, and the call is left running."""
    events: list[PolicyEvent] = []
    bulkhead = Bulkhead(1)
    stack = PolicyStack(
        Policies(bulkhead=bulkhead, attempt_timeout=1.0, attempt_grace=0.5),
        stage="enrich",
        dependency="scores",
        clock=clock,
        hooks=(events.append,),
    )
    hostile = Stubborn(clock.monotonic, swallow=float("inf"))

    async def healthy() -> str:
        return "ok"

    with caplog.at_level(logging.WARNING, logger="riprap.policies"), pytest.raises(StageTimeout):
        await stack.wrap(hostile)()
    assert 1.5 == clock.monotonic()
    assert pytest.approx([1.0, 1.05]) == hostile.cancelled_at[:2]  # kept cancelling
    assert "ok" == await stack.wrap(healthy)()  # the only slot was given back
    assert 0 == bulkhead.statistics().in_use
    assert ShelterStatistics(abandoned=1, running=1, closing=False) == stack.shelter.statistics()
    assert [
        CallAbandoned(
            stage="enrich",
            dependency="scores",
            at=1.5,
            kind="attempt",
            timeout=1.0,
            reason="timeout",
        )
    ] == [e for e in events if isinstance(e, CallAbandoned)]
    assert [("riprap.policies", "enrich")] == [
        (r.name, getattr(r, "stage", None)) for r in caplog.records
    ]
    hostile.release()
    await wait_until(lambda: not stack.shelter.running)
    assert ShelterStatistics(abandoned=1, running=0, closing=False) == stack.shelter.statistics()


async def test_abandonment_works_on_the_real_clock() -> None:
    """On the system clock too, a call that ignores every cancellation is abandoned in time."""
    hostile = Stubborn(time.monotonic, swallow=float("inf"))
    stack = PolicyStack(Policies(attempt_timeout=0.02, attempt_grace=0.05))
    with anyio.fail_after(5), pytest.raises(StageTimeout):
        await stack.wrap(hostile)()
    assert (1, 1) == (stack.statistics().abandoned_calls, len(stack.shelter.running))
    hostile.release()
    with anyio.fail_after(5):
        await hostile.ended.wait()


async def test_a_total_timeout_abandons_a_call_that_ignores_it_within_the_grace(
    clock: VirtualClock,
) -> None:
    """A total timeout cancels the sheltered attempt; ignored for the grace, it is abandoned."""
    events: list[PolicyEvent] = []
    stack = PolicyStack(
        Policies(timeout=2.0, attempt_timeout=10.0, attempt_grace=0.5),
        stage="enrich",
        clock=clock,
        hooks=(events.append,),
    )
    hostile = Stubborn(clock.monotonic, swallow=float("inf"))
    with pytest.raises(StageTimeout) as info:
        await stack.wrap(hostile)()
    assert ("total", 2.5) == (info.value.kind, clock.monotonic())
    assert ["cancelled"] == [e.reason for e in events if isinstance(e, CallAbandoned)]
    hostile.release()
    await hostile.ended.wait()


async def test_sheltered_calls_on_the_real_clock_return_raise_and_leave_no_task() -> None:
    """Each attempt in a task of its own, on the system clock: a call that ends at once, one
    that waits first, one that raises; each sees its caller's context, and none outlives it."""
    caller = contextvars.ContextVar[str]("caller")

    async def call(i: int) -> str:
        if i > 0:
            await anyio.lowlevel.checkpoint()
        if i == 2:
            raise ValueError(f"boom from {caller.get()}")
        return f"{i} for {caller.get()}"

    stack = PolicyStack(Policies(attempt_timeout=30.0, attempt_grace=1.0))
    wrapped = stack.wrap(call)
    caller.set("me")
    before = asyncio.all_tasks()
    with anyio.fail_after(5):
        assert ["0 for me", "1 for me"] == [await wrapped(0), await wrapped(1)]
        with pytest.raises(ValueError, match="boom from me"):
            await wrapped(2)
    assert (asyncio.all_tasks(), stack.statistics().abandoned_calls) == (before, 0)
