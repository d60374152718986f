"""A full stack on the system clock: idle calls take the fused path, with the layers' semantics.

Virtual-clock stacks with timeouts run layered (their timeouts need a task
group); these tests run the full stack on the real clock, with deadlines of
a few milliseconds, so the fused path meets every outcome a layer decides.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.lowlevel
import pytest

from riprap import DataError, SystemClock, TransientError
from riprap.policies import (
    BreakerConfig,
    Bulkhead,
    BulkheadFullError,
    CallRejected,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    FallbackUsed,
    Policies,
    PolicyEvent,
    PolicyStack,
    Retry,
    RetryGaveUp,
    RetryScheduled,
    StageTimeout,
    admit_nowait,
    fallback,
    retry,
)

from ._doubles import returns_when_cancelled

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from riprap.testing import VirtualClock

pytestmark = pytest.mark.anyio

FAST_RETRY = Retry(attempts=3, wait_initial=0.0, wait_max=0.0, timeout=None)


def full_stack(
    events: list[PolicyEvent],
    *,
    breaker: CircuitBreaker | None = None,
    bulkhead: Bulkhead | None = None,
    timeout: float = 5.0,
    attempt_timeout: float = 5.0,
    on_open: Literal["raise", "wait"] = "raise",
) -> PolicyStack:
    """Every policy at once on the system clock, recording the events."""
    return PolicyStack(
        Policies(
            timeout=timeout,
            retry=FAST_RETRY,
            breaker=breaker or CircuitBreaker("dep", BreakerConfig(minimum_calls=10)),
            on_open=on_open,
            bulkhead=bulkhead or Bulkhead(4, name="dep"),
            attempt_timeout=attempt_timeout,
        ),
        stage="enrich",
        clock=SystemClock(),
        random=random.Random(1),
        hooks=(events.append,),
    )


def current_cancellations() -> int:
    """How many cancellations the running task has pending."""
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


async def test_a_call_holds_a_slot_and_a_permit_and_is_counted() -> None:
    """Inside the call the slot is taken and admit_nowait() passes; after it, both are back."""
    events: list[PolicyEvent] = []
    stack = full_stack(events)
    seen: list[int] = []

    async def call(x: int) -> int:
        admit_nowait()  # the permit is the call's: nothing to renew
        stats = stack.statistics().bulkhead
        assert stats is not None
        seen.append(stats.in_use)
        return x * 2

    assert 42 == await stack.wrap(call)(21)
    stats = stack.statistics()
    assert stats.breaker is not None
    assert stats.bulkhead is not None
    assert [1] == seen
    assert (1, 0) == (stats.breaker.calls, stats.breaker.failures)
    assert 0 == stats.bulkhead.in_use
    assert [] == events
    assert 0 == current_cancellations()


async def test_an_attempt_timeout_fires_and_is_retried() -> None:
    """The first attempt outlives its deadline: a StageTimeout("attempt"), a retry, a result."""
    events: list[PolicyEvent] = []
    stack = full_stack(events, attempt_timeout=0.01)
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) == 1:
            await anyio.sleep_forever()
        return "ok"

    with anyio.fail_after(5):
        assert "ok" == await stack.wrap(call)()
    scheduled = [e for e in events if isinstance(e, RetryScheduled)]
    assert 1 == len(scheduled)
    assert isinstance(scheduled[0].error, StageTimeout)
    assert "attempt" == scheduled[0].error.kind
    breaker = stack.statistics().breaker
    assert breaker is not None
    assert (2, 1) == (breaker.calls, breaker.failures)
    assert 0 == current_cancellations()


async def test_the_total_timeout_ends_the_call_and_its_retries() -> None:
    """An attempt that would run past the total timeout is cancelled: StageTimeout("total")."""
    events: list[PolicyEvent] = []
    stack = full_stack(events, timeout=0.01)

    async def hang() -> str:
        await anyio.sleep_forever()
        return "never"

    with anyio.fail_after(5), pytest.raises(StageTimeout) as info:
        await stack.wrap(hang)()
    assert "total" == info.value.kind
    breaker = stack.statistics().breaker
    bulkhead = stack.statistics().bulkhead
    assert breaker is not None
    assert bulkhead is not None
    assert 0 == breaker.calls  # a cancelled call is not counted
    assert 0 == bulkhead.in_use
    assert 0 == current_cancellations()


async def test_an_outer_cancellation_is_never_swallowed() -> None:
    """A cancel scope around the call cancels it; it is no timeout and nothing counts it."""
    events: list[PolicyEvent] = []
    stack = full_stack(events)

    async def hang() -> str:
        await anyio.sleep_forever()
        return "never"

    with anyio.move_on_after(0.005) as outer:
        await stack.wrap(hang)()
    assert outer.cancelled_caught
    stats = stack.statistics()
    assert stats.breaker is not None
    assert stats.bulkhead is not None
    assert (0, 0) == (stats.breaker.calls, stats.bulkhead.in_use)
    assert [] == events
    assert 0 == current_cancellations()


async def test_a_call_that_swallows_its_deadline_is_cancelled_again() -> None:
    """A call that catches the attempt's cancellation once gets another one, and times out."""
    caught: list[int] = []

    async def stubborn() -> str:
        while True:
            try:
                await anyio.sleep_forever()
            except asyncio.CancelledError:
                caught.append(1)
                if len(caught) > 1:
                    raise

    single = PolicyStack(
        Policies(
            timeout=5.0,
            breaker=CircuitBreaker("dep"),
            bulkhead=Bulkhead(1),
            attempt_timeout=0.005,
        ),
        clock=SystemClock(),
    )
    with anyio.fail_after(5), pytest.raises(StageTimeout) as info:
        await single.wrap(stubborn)()
    assert "attempt" == info.value.kind
    assert 2 == len(caught)
    assert 0 == current_cancellations()


async def test_a_call_that_swallows_its_deadline_and_returns_leaves_no_cancellation() -> None:
    """A call that catches the attempt's cancellation and returns keeps its result; the
    caller's task is left with no cancellation pending, so its next await runs."""
    events: list[PolicyEvent] = []

    wrapped = full_stack(events, attempt_timeout=0.005).wrap(returns_when_cancelled)
    with anyio.fail_after(5):
        assert "swallowed" == await wrapped()
    assert 0 == current_cancellations()
    await anyio.sleep(0.06)  # past a re-cancellation, had one been left armed
    assert 0 == current_cancellations()


async def test_errors_are_classified_as_in_the_layers() -> None:
    """Transient errors are retried and fail the breaker; DataError and bugs pass at once."""
    events: list[PolicyEvent] = []
    breaker = CircuitBreaker("dep", BreakerConfig(minimum_calls=10, window_size=10))
    stack = full_stack(events, breaker=breaker)
    errors: list[Exception] = [TransientError("blip")]

    async def call() -> str:
        if errors:
            raise errors.pop()
        return "ok"

    wrapped = stack.wrap(call)
    assert "ok" == await wrapped()  # one transient failure, retried
    errors.append(DataError("bad record"))
    with pytest.raises(DataError):
        await wrapped()
    errors.append(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        await wrapped()
    stats = breaker.statistics()
    assert (3, 1) == (stats.calls, stats.failures)  # a bug is not the dependency's
    assert ["RetryScheduled"] == [type(e).__name__ for e in events]


async def test_retries_give_up_with_the_last_error() -> None:
    """Every attempt fails: the retry gives up and re-raises the last error unchanged."""
    events: list[PolicyEvent] = []
    stack = full_stack(events, breaker=CircuitBreaker("dep", BreakerConfig(minimum_calls=10)))
    raised: list[TransientError] = []

    async def failing() -> str:
        raised.append(TransientError(f"try {len(raised)}"))
        raise raised[-1]

    with pytest.raises(TransientError) as info:
        await stack.wrap(failing)()
    assert raised[-1] is info.value
    assert 3 == len(raised)
    gave_up = [e for e in events if isinstance(e, RetryGaveUp)]
    assert ["attempts"] == [e.reason for e in gave_up]


async def test_an_open_breaker_refuses_and_the_fallback_answers() -> None:
    """Failures open the breaker; later calls find it busy, are refused and fall back."""
    events: list[PolicyEvent] = []
    breaker = CircuitBreaker("dep", BreakerConfig(minimum_calls=2, window_size=2))
    stack = full_stack(events, breaker=breaker)

    async def failing() -> str:
        raise TransientError("down")

    async def degraded(error: Exception) -> str:
        return type(error).__name__

    wrapped = stack.wrap(failing, fallback=degraded)
    # Two failed attempts open the breaker, which refuses the third one...
    assert "CircuitOpenError" == await wrapped()
    assert CircuitState.OPEN == breaker.state
    assert "CircuitOpenError" == await wrapped()  # ...and the next call, before its slot
    rejected = [e for e in events if isinstance(e, CallRejected)]
    assert [] != rejected
    assert all(isinstance(e.error, CircuitOpenError) for e in rejected)
    assert 2 == sum(isinstance(e, FallbackUsed) for e in events)


async def test_the_bulkhead_bounds_concurrency_across_both_paths() -> None:
    """Callers beyond the limit wait (layered path) or are refused; never more run at once."""
    events: list[PolicyEvent] = []
    bulkhead = Bulkhead(2, max_waiters=2, name="dep")
    stack = full_stack(events, bulkhead=bulkhead)
    running = 0
    most = 0
    release = anyio.Event()

    async def call() -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await release.wait()
        finally:
            running -= 1
        return "ok"

    wrapped = stack.wrap(call)
    results: list[str] = []

    async def caller() -> None:
        try:
            results.append(await wrapped())
        except BulkheadFullError:
            results.append("full")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(caller)
            while len(results) < 1:  # the fifth caller finds two running, two waiting
                await anyio.lowlevel.checkpoint()
            release.set()
    assert 2 == most
    assert ["full", "ok", "ok", "ok", "ok"] == sorted(results)
    assert 0 == bulkhead.statistics().in_use


@pytest.mark.parametrize(
    ("on_open", "refusal"), [("wait", anyio.WouldBlock), ("raise", CircuitOpenError)]
)
async def test_a_permit_made_stale_renews_by_the_stack_s_rule(
    on_open: Literal["raise", "wait"], refusal: type[Exception]
) -> None:
    """A breaker opened during the call refuses to renew its permit, by the stack's on_open rule."""
    events: list[PolicyEvent] = []
    breaker = CircuitBreaker("dep")
    stack = full_stack(events, breaker=breaker, on_open=on_open)
    seen: list[type[Exception]] = []

    async def call() -> str:
        breaker.force_open()
        try:
            admit_nowait()
        except refusal:
            seen.append(refusal)
        finally:
            breaker.reset()
        return "ok"

    assert "ok" == await stack.wrap(call)()
    assert [refusal] == seen


async def test_an_attempt_with_a_grace_runs_sheltered_inside_the_fused_layers() -> None:
    """With attempt_grace the attempt keeps its own task; its timeout is retried as usual."""
    events: list[PolicyEvent] = []
    bulkhead = Bulkhead(1)
    stack = PolicyStack(
        Policies(
            timeout=5.0,
            retry=FAST_RETRY,
            bulkhead=bulkhead,
            attempt_timeout=0.01,
            attempt_grace=1.0,
        ),
        clock=SystemClock(),
        hooks=(events.append,),
    )
    tasks: list[asyncio.Task[object] | None] = []

    async def call() -> str:
        tasks.append(asyncio.current_task())
        if len(tasks) == 1:
            await anyio.sleep_forever()
        return "ok"

    with anyio.fail_after(5):
        assert "ok" == await stack.wrap(call)()
    assert asyncio.current_task() not in tasks  # each attempt ran in a task of its own
    assert ["RetryScheduled"] == [type(e).__name__ for e in events]
    assert 0 == bulkhead.statistics().in_use


Outcome = Literal["ok", "transient", "data", "slow"]


def layered_by_hand(
    breaker: CircuitBreaker,
    bulkhead: Bulkhead,
    clock: VirtualClock,
    events: list[PolicyEvent],
    fn: Callable[[int], Awaitable[str]],
) -> Callable[[int], Awaitable[str]]:
    """The stack's layers composed one by one from the public decorators (no fused path)."""
    hooks = (events.append,)
    retried = retry(CHAOS_RETRY, clock=clock, random=random.Random(1), hooks=hooks)
    degraded = fallback(answer_with_error, clock=clock, hooks=hooks)
    return degraded(retried(bulkhead.wrap(breaker.wrap(fn))))


async def answer_with_error(error: Exception, i: int, /) -> str:
    """The fallback: names the error it replaces."""
    return f"fallback {type(error).__name__}"


CHAOS_RETRY = Retry(attempts=3, wait_initial=1.0, wait_max=4.0, wait_jitter="none", timeout=None)


Run = tuple[list[str], list[tuple[object, ...]], tuple[object, ...]]
"""What a run of outcomes gave: results, events (without times), breaker statistics."""

EVENT_FIELDS = ("attempt", "delay", "reason", "new")


async def run_outcomes(clock: VirtualClock, outcomes: list[Outcome], *, fused: bool) -> Run:
    """Call 200 times through the stack (``fused``) or the hand-built layers, one at a time."""
    events: list[PolicyEvent] = []
    config = BreakerConfig(minimum_calls=4, window_size=8, open_duration=5.0, slow_call_duration=2)
    breaker = CircuitBreaker("dep", config, clock=clock, hooks=(events.append,))
    bulkhead = Bulkhead(1, name="dep", clock=clock, hooks=(events.append,))
    pending = iter(outcomes)

    async def call(i: int, /) -> str:
        outcome = next(pending, "ok")
        if outcome == "slow":
            await clock.sleep(3.0)
        elif outcome == "transient":
            raise TransientError("blip")
        elif outcome == "data":
            raise DataError("bad")
        return f"ok {i}"

    wrapped: Callable[[int], Awaitable[str]]
    if fused:
        stack = PolicyStack(
            Policies(retry=CHAOS_RETRY, breaker=breaker, bulkhead=bulkhead),
            clock=clock,
            random=random.Random(1),
            hooks=(events.append,),
        )
        wrapped = stack.wrap(call, fallback=answer_with_error)
    else:
        wrapped = layered_by_hand(breaker, bulkhead, clock, events, call)
    results: list[str] = []
    for i in range(200):
        try:
            results.append(await wrapped(i))
        except DataError:
            results.append("data error")
        await clock.sleep(0.5)  # an open breaker turns half-open in time
    seen = [(type(e).__name__, *(getattr(e, f, None) for f in EVENT_FIELDS)) for e in events]
    stats = breaker.statistics()
    return results, seen, (stats.state, stats.calls, stats.failures, stats.rejected)


async def test_the_fused_stack_matches_the_layers_composed_by_hand(clock: VirtualClock) -> None:
    """Random outcomes through the stack and through hand-built layers: same results and events."""
    kinds: list[Outcome] = ["ok", "transient", "data", "slow"]
    outcomes = random.Random(7).choices(kinds, [6, 3, 1, 1], k=300)
    fused = await run_outcomes(clock, outcomes, fused=True)
    layered = await run_outcomes(clock, outcomes, fused=False)
    assert layered == fused
    assert any(r == "fallback CircuitOpenError" for r in fused[0])  # the breaker did open
    assert any(r.startswith("ok") for r in fused[0][-20:])  # and closed again
