"""The policy stack: composition order and behaviour of the layers together."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from riprap import ConfigError, DataError, SystemClock, TransientError
from riprap.policies import (
    BreakerConfig,
    Bulkhead,
    BulkheadFullError,
    CallRejected,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    CircuitStateChanged,
    FallbackUsed,
    Policies,
    PolicyEvent,
    PolicyStack,
    Retry,
    RetryGaveUp,
    RetryScheduled,
    StageTimeout,
)
from riprap.testing import VirtualClock

NO_JITTER = Retry(attempts=5, wait_initial=1.0, wait_max=10.0, wait_jitter="none", timeout=None)


def stack(clock: VirtualClock, events: list[PolicyEvent], **policies: Any) -> PolicyStack:
    """A stack for stage "enrich" on the virtual clock, recording its events."""
    return PolicyStack(
        Policies(**policies),
        stage="enrich",
        clock=clock,
        random=random.Random(1),
        hooks=(events.append,),
    )


def kinds(events: list[PolicyEvent]) -> list[str]:
    """The event class names, in order."""
    return [type(e).__name__ for e in events]


@pytest.mark.anyio
async def test_attempt_timeout_is_retried(clock: VirtualClock) -> None:
    """An attempt that times out is a transient failure: the retry tries again."""
    events: list[PolicyEvent] = []
    starts: list[float] = []

    async def call() -> str:
        starts.append(clock.monotonic())
        if len(starts) == 1:
            await clock.sleep(100)
        return "ok"

    wrapped = stack(clock, events, retry=NO_JITTER, attempt_timeout=2.0).wrap(call)
    assert "ok" == await wrapped()
    assert [0.0, 3.0] == starts  # 2s attempt timeout + 1s backoff
    scheduled = [e for e in events if isinstance(e, RetryScheduled)]
    assert isinstance(scheduled[0].error, StageTimeout)
    assert "attempt" == scheduled[0].error.kind


@pytest.mark.anyio
async def test_total_timeout_bounds_the_retries(clock: VirtualClock) -> None:
    """The total timeout cancels an attempt in progress once all retries took too long."""
    events: list[PolicyEvent] = []
    starts: list[float] = []

    async def hang() -> str:
        starts.append(clock.monotonic())
        await clock.sleep(100)
        return "late"

    retry = Retry(attempts=100, timeout=None, wait_initial=0.5, wait_max=0.5, wait_jitter="none")
    wrapped = stack(clock, events, timeout=6.0, retry=retry, attempt_timeout=2.0).wrap(hang)
    with pytest.raises(StageTimeout) as info:
        await wrapped()
    assert "total" == info.value.kind
    assert [0.0, 2.5, 5.0] == starts
    assert 6.0 == clock.monotonic()


@pytest.mark.anyio
async def test_total_timeout_caps_the_retry_deadline(clock: VirtualClock) -> None:
    """A wait that cannot finish within the total timeout is not started: the real error wins."""
    events: list[PolicyEvent] = []
    error = TransientError("down")

    async def failing() -> str:
        await clock.sleep(1)
        raise error

    wrapped = stack(clock, events, timeout=5.0, retry=NO_JITTER).wrap(failing)
    with pytest.raises(TransientError) as info:
        await wrapped()
    assert info.value is error
    # Attempts at 0 and 2 (each 1s, then a 1s wait); the next 2s wait would end at the
    # 5s deadline, leaving the attempt no time: give up with the real error instead.
    assert "deadline" == next(e for e in events if isinstance(e, RetryGaveUp)).reason


@pytest.mark.anyio
async def test_retry_sits_outside_the_breaker(clock: VirtualClock) -> None:
    """Every attempt is one breaker call; once it opens, the retry stops on CircuitOpenError."""
    events: list[PolicyEvent] = []
    breaker = CircuitBreaker(
        "api", BreakerConfig(window_size=3, minimum_calls=3, open_duration=60), clock=clock
    )
    attempts = 0

    async def failing() -> str:
        nonlocal attempts
        attempts += 1
        raise TransientError("503")

    wrapped = stack(clock, events, retry=NO_JITTER, breaker=breaker).wrap(failing)
    with pytest.raises(CircuitOpenError):
        await wrapped()
    assert 3 == attempts
    assert CircuitState.OPEN == breaker.state
    assert [
        "RetryScheduled",
        "RetryScheduled",
        "CircuitStateChanged",
        "RetryScheduled",
        "CallRejected",
    ] == kinds(events)
    assert all(e.dependency == "api" and e.stage == "enrich" for e in events)


@pytest.mark.anyio
async def test_data_error_goes_straight_through(clock: VirtualClock) -> None:
    """A DataError is neither retried nor a breaker failure nor replaced by the fallback."""
    events: list[PolicyEvent] = []
    breaker = CircuitBreaker("api", BreakerConfig(window_size=2, minimum_calls=1), clock=clock)

    async def bad_record(x: int) -> int:
        raise DataError(f"bad {x}")

    async def degraded(error: Exception, x: int) -> int:
        return -1

    s = stack(clock, events, retry=NO_JITTER, breaker=breaker)
    with pytest.raises(DataError):
        await s.wrap(bad_record, fallback=degraded)(7)
    assert [] == events
    assert (CircuitState.CLOSED, 1, 0) == (
        breaker.state,
        breaker.statistics().calls,
        breaker.statistics().failures,
    )


@pytest.mark.anyio
async def test_breaker_sits_outside_the_bulkhead(clock: VirtualClock) -> None:
    """A full bulkhead is not a breaker failure, and an open breaker takes no bulkhead slot."""
    events: list[PolicyEvent] = []
    breaker = CircuitBreaker("api", BreakerConfig(window_size=2, minimum_calls=1), clock=clock)
    bulkhead = Bulkhead(1, max_waiters=0, name="api-slots", clock=clock)
    gate = anyio.Event()

    async def call() -> str:
        await gate.wait()
        return "ok"

    wrapped = stack(clock, events, breaker=breaker, bulkhead=bulkhead).wrap(call)
    async with anyio.create_task_group() as tg:
        tg.start_soon(wrapped)
        await clock.wait_all_tasks_blocked()
        with pytest.raises(BulkheadFullError):
            await wrapped()
        assert 0 == breaker.statistics().failures
        gate.set()
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        await wrapped()
    assert 0 == bulkhead.statistics().in_use
    rejected = [e for e in events if isinstance(e, CallRejected)]
    assert [("bulkhead_full", "api-slots"), ("circuit_open", "api")] == [
        (e.reason, e.dependency) for e in rejected
    ]


@pytest.mark.anyio
async def test_attempt_timeout_excludes_bulkhead_waiting(clock: VirtualClock) -> None:
    """Waiting for a bulkhead slot is not charged to the attempt timeout."""
    events: list[PolicyEvent] = []
    bulkhead = Bulkhead(1, clock=clock)
    results: list[tuple[str, float]] = []

    async def call(name: str) -> None:
        await clock.sleep(1.5)
        results.append((name, clock.monotonic()))

    wrapped = stack(clock, events, bulkhead=bulkhead, attempt_timeout=2.0).wrap(call)
    async with anyio.create_task_group() as tg:
        for name in "abc":
            tg.start_soon(wrapped, name)
    assert [("a", 1.5), ("b", 3.0), ("c", 4.5)] == results


@pytest.mark.anyio
async def test_fallback_is_outermost(clock: VirtualClock) -> None:
    """The fallback answers after the total timeout, with its own event."""
    events: list[PolicyEvent] = []

    async def hang(x: int) -> int:
        await clock.sleep(100)
        return x

    async def degraded(error: Exception, x: int) -> int:
        assert isinstance(error, StageTimeout)
        return -x

    wrapped = stack(clock, events, timeout=3.0, retry=NO_JITTER).wrap(hang, fallback=degraded)
    assert -4 == await wrapped(4)
    assert 3.0 == clock.monotonic()
    assert ["FallbackUsed"] == kinds(events)


@pytest.mark.anyio
async def test_waiting_on_an_open_breaker_is_backpressure(clock: VirtualClock) -> None:
    """With on_open="wait" the call waits out the open breaker instead of failing."""
    events: list[PolicyEvent] = []
    breaker = CircuitBreaker(
        "api",
        BreakerConfig(window_size=1, minimum_calls=1, open_duration=30, half_open_probes=1),
        clock=clock,
    )
    breaker.force_open()
    breaker.reset()
    breaker.allow().record(TransientError("down"))  # opens at t=0 for 30s

    async def call() -> str:
        return "ok"

    wrapped = stack(clock, events, breaker=breaker, on_open="wait").wrap(call)
    assert "ok" == await wrapped()
    assert 30.0 == clock.monotonic()
    assert [("open", "half_open"), ("half_open", "closed")] == [
        (e.old, e.new) for e in events if isinstance(e, CircuitStateChanged)
    ]


@pytest.mark.anyio
async def test_stack_hooks_are_registered_once_on_shared_policies(clock: VirtualClock) -> None:
    """Two stacks sharing a breaker and a hook see each breaker event once."""
    events: list[PolicyEvent] = []
    hook = events.append
    breaker = CircuitBreaker("api", BreakerConfig(window_size=1, minimum_calls=1), clock=clock)
    first = PolicyStack(Policies(breaker=breaker), stage="a", clock=clock, hooks=(hook,))
    second = PolicyStack(Policies(breaker=breaker), stage="b", clock=clock, hooks=(hook,))

    async def failing() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError):
        await first.wrap(failing)()
    with pytest.raises(CircuitOpenError):
        await second.wrap(failing)()
    assert [("CircuitStateChanged", "a"), ("CallRejected", "b")] == [
        (type(e).__name__, e.stage) for e in events
    ]


@pytest.mark.anyio
async def test_wrapped_call_is_transparent(clock: VirtualClock) -> None:
    """The wrapped callable keeps its name, docstring and arguments."""
    events: list[PolicyEvent] = []

    async def enrich(record: dict[str, int], *, factor: int = 1) -> int:
        """Enrich one record."""
        return record["v"] * factor

    s = stack(clock, events, timeout=10, retry=NO_JITTER, attempt_timeout=1)
    wrapped = s.wrap(enrich)
    assert ("enrich", "Enrich one record.") == (wrapped.__name__, wrapped.__doc__)
    assert 6 == await wrapped({"v": 3}, factor=2)
    assert 6 == await s.call(enrich, {"v": 2}, factor=3)


def test_statistics_snapshot() -> None:
    """statistics() reports the breaker, the bulkhead and the retry budget."""
    clock = VirtualClock()
    breaker = CircuitBreaker("api", clock=clock)
    s = PolicyStack(
        Policies(breaker=breaker, bulkhead=Bulkhead(3, name="slots")),
        stage="enrich",
        clock=clock,
    )
    stats = s.statistics()
    assert ("enrich", "api") == (stats.stage, stats.dependency)
    assert stats.breaker is not None
    assert CircuitState.CLOSED == stats.breaker.state
    assert stats.bulkhead is not None
    assert 3 == stats.bulkhead.max_concurrent
    assert stats.retry_budget_tokens is None


def test_impossible_policies_are_config_errors() -> None:
    """on_open="wait" without a breaker, bad timeouts and mismatched clocks are refused."""
    with pytest.raises(ConfigError, match="on_open"):
        Policies(on_open="wait")
    with pytest.raises(ConfigError, match="attempt_timeout"):
        Policies(attempt_timeout=0)
    breaker = CircuitBreaker("api", clock=VirtualClock())
    with pytest.raises(ConfigError, match="clock"):
        PolicyStack(Policies(breaker=breaker), clock=SystemClock())


@pytest.mark.anyio
async def test_empty_stack_passes_calls_through() -> None:
    """With no policies the wrapped function is the function itself."""

    async def identity(x: int) -> int:
        return x

    assert identity is PolicyStack().wrap(identity)
    assert 5 == await PolicyStack().wrap(identity)(5)


class _AsyncCallable:
    """A dependency client called as an object: ``await client(x)``."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, x: int) -> int:
        self.calls += 1
        return x * 2


@pytest.mark.anyio
async def test_an_async_callable_object_is_called_without_a_wrapper() -> None:
    """An object whose ``__call__`` is ``async def`` needs no frame of its own around it."""
    client = _AsyncCallable()
    assert client is PolicyStack().wrap(client)
    wrapped = PolicyStack(Policies(retry=Retry(attempts=2))).wrap(client)
    assert (8, 1) == (await wrapped(4), client.calls)


@pytest.mark.anyio
async def test_full_stack_on_the_system_clock() -> None:
    """Every layer together on the real clock: a flaky call succeeds on its second attempt."""
    events: list[PolicyEvent] = []
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransientError("blip")
        return "ok"

    async def degraded(error: Exception) -> str:
        return "degraded"

    s = PolicyStack(
        Policies(
            timeout=10,
            retry=Retry(wait_initial=0, wait_max=0),
            breaker=CircuitBreaker("api"),
            bulkhead=Bulkhead(2),
            attempt_timeout=5,
        ),
        hooks=(events.append,),
    )
    assert "ok" == await s.wrap(flaky, fallback=degraded)()
    assert ["RetryScheduled"] == kinds(events)
    assert [FallbackUsed] != [type(e) for e in events]
