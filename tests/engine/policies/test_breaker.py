"""Circuit breaker: windows, thresholds, half-open probes, forcing, sharing, waiting."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from riprap import ConfigError, DataError, TransientError
from riprap.policies import (
    BreakerConfig,
    CallRejected,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    CircuitStateChanged,
    PolicyEvent,
)
from riprap.testing import VirtualClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def breaker(
    clock: VirtualClock, events: list[PolicyEvent] | None = None, **config: Any
) -> CircuitBreaker:
    """A breaker named "db" on the virtual clock."""
    hooks = (events.append,) if events is not None else ()
    return CircuitBreaker("db", BreakerConfig(**config), clock=clock, hooks=hooks)


def feed(b: CircuitBreaker, *outcomes: BaseException | None) -> None:
    """Record instantaneous calls with the given outcomes (None = success)."""
    for outcome in outcomes:
        b.allow().record(outcome)


def transitions(events: list[PolicyEvent]) -> list[tuple[str, str, str]]:
    """The (old, new, reason) of every state-change event."""
    return [(e.old, e.new, e.reason) for e in events if isinstance(e, CircuitStateChanged)]


FAIL = TransientError("down")


def test_count_window_opens_at_the_failure_rate_after_minimum_calls() -> None:
    """Below minimum_calls nothing is evaluated; at the threshold the breaker opens."""
    clock, events = VirtualClock(), list[PolicyEvent]()
    b = breaker(clock, events, window_size=4, minimum_calls=4, failure_rate_threshold=0.5)
    feed(b, FAIL, FAIL, FAIL)
    assert CLOSED == b.state  # 100% failures, but only 3 calls
    feed(b, None)
    assert OPEN == b.state
    change = next(e for e in events if isinstance(e, CircuitStateChanged))
    assert ("closed", "open", "failure_rate", 0.75) == (
        change.old,
        change.new,
        change.reason,
        change.failure_rate,
    )
    assert "db" == change.dependency


def test_count_window_slides_over_the_last_n_calls() -> None:
    """Old outcomes fall out of a count window as new ones arrive."""
    b = breaker(VirtualClock(), window_size=4, minimum_calls=4, failure_rate_threshold=0.5)
    feed(b, FAIL, None, None, None)  # 25%
    feed(b, None)  # window: S S S S
    assert 0 == b.statistics().failures
    feed(b, FAIL)  # S S S F
    assert CLOSED == b.state
    feed(b, FAIL)  # S S F F -> 50%
    assert OPEN == b.state


def test_time_window_forgets_calls_older_than_its_size() -> None:
    """Failures older than the time window no longer count toward the rate."""
    clock = VirtualClock()
    b = breaker(clock, window="time", window_size=10, minimum_calls=2, failure_rate_threshold=0.5)
    feed(b, FAIL)
    clock.advance(11)
    feed(b, FAIL)
    assert CLOSED == b.state
    assert 1 == b.statistics().calls
    clock.advance(1)
    feed(b, FAIL)
    assert OPEN == b.state


def test_time_window_counts_within_the_window() -> None:
    """Calls spread over less than the window size all count."""
    clock = VirtualClock()
    b = breaker(clock, window="time", window_size=60, minimum_calls=4, failure_rate_threshold=0.5)
    for outcome in (None, FAIL, None, FAIL):
        feed(b, outcome)
        clock.advance(10)
    assert OPEN == b.state


@pytest.mark.anyio
@pytest.mark.parametrize("window", ["count", "time"])
async def test_slow_calls_open_the_breaker(clock: VirtualClock, window: str) -> None:
    """Successful but slow calls trip the slow-call-rate threshold, in either window type."""
    events: list[PolicyEvent] = []
    b = breaker(
        clock,
        events,
        window=window,
        window_size=60,
        minimum_calls=2,
        slow_call_duration=2.0,
        slow_call_rate_threshold=0.5,
    )

    @b
    async def call(seconds: float) -> None:
        await clock.sleep(seconds)

    await call(1.0)
    assert CLOSED == b.state
    await call(3.0)  # 1 of 2 slow: 50%
    assert OPEN == b.state
    assert [("closed", "open", "slow_call_rate")] == transitions(events)


def test_data_errors_count_as_answered_calls_and_bugs_are_ignored() -> None:
    """A DataError is not a failure of the dependency; a bug is not recorded at all."""
    b = breaker(VirtualClock(), window_size=10, minimum_calls=5)
    feed(b, *[DataError("bad record")] * 6)
    feed(b, *[ValueError("bug")] * 6)
    stats = b.statistics()
    assert (CLOSED, 6, 0) == (stats.state, stats.calls, stats.failures)


def test_open_breaker_rejects_with_remaining_time_and_an_event() -> None:
    """While open, allow() raises CircuitOpenError carrying the breaker and time left."""
    clock, events = VirtualClock(), list[PolicyEvent]()
    b = breaker(clock, events, window_size=2, minimum_calls=2, open_duration=30)
    feed(b, FAIL, FAIL)
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        b.allow(stage="enrich")
    assert ("db", 20.0) == (info.value.breaker, info.value.remaining)
    rejected = [e for e in events if isinstance(e, CallRejected)]
    assert [("circuit_open", "enrich")] == [(e.reason, e.stage) for e in rejected]
    assert 1 == b.statistics().rejected


def test_half_open_admits_exactly_the_probe_count_then_closes() -> None:
    """After open_duration, N probes pass, the N+1th is refused, N successes close it."""
    clock, events = VirtualClock(), list[PolicyEvent]()
    b = breaker(clock, events, window_size=2, minimum_calls=2, open_duration=30, half_open_probes=3)
    feed(b, FAIL, FAIL)
    clock.advance(30)
    probes = [b.allow() for _ in range(3)]
    assert all(p.probe for p in probes)
    with pytest.raises(CircuitOpenError):
        b.allow()
    for probe in probes:
        probe.record(None)
    assert CLOSED == b.state
    assert [
        ("closed", "open", "failure_rate"),
        ("open", "half_open", "open_elapsed"),
        ("half_open", "closed", "probes_passed"),
    ] == transitions(events)


def test_failing_probes_reopen_the_breaker() -> None:
    """Probes at or above the failure threshold send the breaker back to open."""
    clock = VirtualClock()
    b = breaker(clock, window_size=2, minimum_calls=2, open_duration=30, half_open_probes=2)
    feed(b, FAIL, FAIL)
    clock.advance(30)
    first, second = b.allow(), b.allow()
    first.record(None)
    second.record(FAIL)
    assert OPEN == b.state
    assert 30.0 == b.statistics().remaining_open


def test_stale_outcomes_from_before_a_transition_are_ignored() -> None:
    """A call admitted while closed that ends after the breaker opened changes nothing."""
    clock = VirtualClock()
    b = breaker(clock, window_size=2, minimum_calls=2, open_duration=30, half_open_probes=1)
    slow = b.allow()
    feed(b, FAIL, FAIL)
    clock.advance(30)
    probe = b.allow()
    slow.record(FAIL)  # from the closed era: not a probe outcome
    assert HALF_OPEN == b.state
    probe.record(None)
    assert CLOSED == b.state


def test_released_probe_lets_another_through() -> None:
    """A probe given back without an outcome (cancelled) frees its slot."""
    clock = VirtualClock()
    b = breaker(clock, window_size=2, minimum_calls=2, open_duration=1, half_open_probes=1)
    feed(b, FAIL, FAIL)
    clock.advance(1)
    b.allow().release()
    b.allow().record(None)
    assert CLOSED == b.state


@pytest.mark.anyio
@pytest.mark.parametrize("window", ["count", "time"])
async def test_many_waiters_exactly_n_probes_pass(clock: VirtualClock, window: str) -> None:
    """Fifty callers wait on an open breaker; exactly three probes run in half-open."""
    b = breaker(
        clock, window=window, window_size=2, minimum_calls=2, open_duration=30, half_open_probes=3
    )
    feed(b, FAIL, FAIL)
    release_probes = anyio.Event()
    inside = peak_half_open = done = 0

    async def call() -> None:
        nonlocal inside, peak_half_open
        inside += 1
        if b.state is HALF_OPEN:
            peak_half_open = max(peak_half_open, inside)
            await release_probes.wait()
        inside -= 1

    wrapped = b.wrap(call, wait=True)

    async def caller() -> None:
        nonlocal done
        await wrapped()
        done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(caller)
        await clock.sleep(31)
        assert (3, 3, 0) == (inside, peak_half_open, done)
        release_probes.set()
    assert (50, 3, CLOSED) == (done, peak_half_open, b.state)


@pytest.mark.anyio
async def test_waiters_wait_again_when_probes_fail(clock: VirtualClock) -> None:
    """If the probes reopen the breaker, waiters sit out another open duration."""
    b = breaker(clock, window_size=2, minimum_calls=2, open_duration=10, half_open_probes=1)
    feed(b, FAIL, FAIL)
    failures = [FAIL]
    started: list[float] = []

    async def call() -> None:
        started.append(clock.monotonic())
        if failures:
            raise failures.pop()

    wrapped = b.wrap(call, wait=True)
    with pytest.raises(TransientError):
        await wrapped()
    await wrapped()
    assert [10.0, 20.0] == started


def test_force_open_and_reset() -> None:
    """force_open() refuses everything until reset(), which closes and clears the window."""
    clock, events = VirtualClock(), list[PolicyEvent]()
    b = breaker(clock, events, window_size=10, minimum_calls=5, open_duration=1)
    feed(b, FAIL, FAIL)
    b.force_open()
    clock.advance(3600)
    with pytest.raises(CircuitOpenError) as info:
        b.allow()
    assert float("inf") == info.value.remaining
    b.reset()
    assert (CLOSED, 0) == (b.state, b.statistics().calls)
    assert [("closed", "forced_open", "forced_open"), ("forced_open", "closed", "reset")] == (
        transitions(events)
    )


@pytest.mark.anyio
async def test_shared_breaker_cuts_off_every_caller(clock: VirtualClock) -> None:
    """Failures seen through one stage open the breaker for another stage too."""
    events: list[PolicyEvent] = []
    b = breaker(clock, events, window_size=2, minimum_calls=2, failure_rate_threshold=1.0)

    async def failing() -> None:
        raise FAIL

    async def fine() -> str:
        return "ok"

    a_call = b.wrap(failing, stage="a")
    b_call = b.wrap(fine, stage="b")
    assert "ok" == await b_call()
    with pytest.raises(TransientError):
        await a_call()
    with pytest.raises(TransientError):
        await a_call()
    with pytest.raises(CircuitOpenError):
        await b_call()
    assert ["a"] == [e.stage for e in events if isinstance(e, CircuitStateChanged)]
    assert ["b"] == [e.stage for e in events if isinstance(e, CallRejected)]


@pytest.mark.anyio
async def test_async_with_records_outcomes(clock: VirtualClock) -> None:
    """async with breaker: counts the block's outcome and fails fast when open."""
    b = breaker(clock, window_size=2, minimum_calls=2, failure_rate_threshold=1.0)
    async with b:
        pass
    with pytest.raises(TransientError):
        async with b:
            raise FAIL
    assert (2, 1) == (b.statistics().calls, b.statistics().failures)
    with pytest.raises(TransientError):
        async with b:
            raise FAIL
    with pytest.raises(CircuitOpenError):
        async with b:
            pytest.fail("an open breaker ran the block")


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"window": "sliding"}, "BreakerConfig.window"),
        ({"window_size": 0}, "BreakerConfig.window_size"),
        ({"window_size": 2.5}, "BreakerConfig.window_size"),
        ({"window_size": 5, "minimum_calls": 10}, "BreakerConfig.minimum_calls"),
        ({"failure_rate_threshold": 0}, "BreakerConfig.failure_rate_threshold"),
        ({"slow_call_rate_threshold": 1.5}, "BreakerConfig.slow_call_rate_threshold"),
        ({"open_duration": 0}, "BreakerConfig.open_duration"),
        ({"half_open_probes": 0}, "BreakerConfig.half_open_probes"),
    ],
)
def test_invalid_config_names_the_option(options: dict[str, Any], option: str) -> None:
    """An impossible breaker configuration is a ConfigError naming the option."""
    with pytest.raises(ConfigError) as info:
        BreakerConfig(**options)
    assert option == info.value.option


@pytest.mark.anyio
async def test_cancelled_waiter_takes_no_permit(clock: VirtualClock) -> None:
    """A caller cancelled while waiting for a permit leaves every probe to the others."""
    b = breaker(clock, window_size=2, minimum_calls=2, open_duration=30, half_open_probes=1)
    feed(b, FAIL, FAIL)
    with anyio.move_on_after(0):
        await b.wait_until_permitted()
    await clock.sleep(30)
    permit = b.allow()
    assert permit.probe
    permit.record(None)
    assert CLOSED == b.state


def test_outcome_is_recorded_once() -> None:
    """Recording a permit twice counts it once."""
    b = breaker(VirtualClock(), window_size=10, minimum_calls=5)
    permit = b.allow()
    permit.record(FAIL)
    permit.record(FAIL)
    permit.release()
    assert (1, 1) == (b.statistics().calls, b.statistics().failures)
