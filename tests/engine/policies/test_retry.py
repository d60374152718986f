"""Retry: backoff sequences, deadline, Retry-After, budget, and what is never retried."""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from riprap import ConfigError, DataError, TransientError
from riprap.policies import (
    BulkheadFullError,
    CircuitOpenError,
    Classifier,
    PolicyEvent,
    Retry,
    RetryBudget,
    RetryGaveUp,
    RetryScheduled,
    retry,
)
from riprap.testing import VirtualClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

SEED = 20240611


def take(config: Retry, n: int, seed: int = SEED) -> list[float]:
    """The first ``n`` backoff delays of ``config`` under a seeded Random."""
    return list(itertools.islice(config.backoff(random.Random(seed)), n))


def test_backoff_without_jitter_is_exponential_and_capped() -> None:
    """No jitter: base, base*2, base*4, ... up to wait_max."""
    config = Retry(wait_initial=0.1, wait_max=1.0, wait_jitter="none")
    assert pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]) == take(config, 6)


def test_backoff_multiplier() -> None:
    """wait_exp_base sets the growth factor."""
    config = Retry(wait_initial=1.0, wait_max=100.0, wait_exp_base=3.0, wait_jitter="none")
    assert pytest.approx([1.0, 3.0, 9.0, 27.0, 81.0, 100.0]) == take(config, 6)


def test_full_jitter_sequence() -> None:
    """Full jitter: uniform(0, min(cap, base * 2**n)), per the AWS definition."""
    rng = random.Random(SEED)
    expected = [rng.uniform(0, min(2.0, 0.1 * 2**n)) for n in range(8)]
    assert expected == take(Retry(wait_initial=0.1, wait_max=2.0, wait_jitter="full"), 8)


def test_equal_jitter_sequence() -> None:
    """Equal jitter: half the exponential step plus uniform(0, half)."""
    rng = random.Random(SEED)
    expected = []
    for n in range(8):
        step = min(2.0, 0.1 * 2**n)
        expected.append(step / 2 + rng.uniform(0, step / 2))
    assert expected == take(Retry(wait_initial=0.1, wait_max=2.0, wait_jitter="equal"), 8)


def test_decorrelated_jitter_sequence() -> None:
    """Decorrelated jitter: min(cap, uniform(base, previous * 3)), starting from base."""
    rng = random.Random(SEED)
    expected, sleep = [], 0.1
    for _ in range(8):
        sleep = min(2.0, rng.uniform(0.1, sleep * 3))
        expected.append(sleep)
    assert expected == take(Retry(wait_initial=0.1, wait_max=2.0, wait_jitter="decorrelated"), 8)


def test_same_seed_same_sequence() -> None:
    """The sequence is a pure function of the seed."""
    config = Retry(wait_jitter="decorrelated")
    assert take(config, 20, seed=1) == take(config, 20, seed=1)
    assert take(config, 20, seed=1) != take(config, 20, seed=2)


class Flaky:
    """An async callable that raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, clock: VirtualClock, *errors: BaseException) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(self.clock.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def retrying(
    clock: VirtualClock, config: Retry, events: list[PolicyEvent] | None = None
) -> Callable[[Callable[[], Awaitable[str]]], Callable[[], Coroutine[Any, Any, str]]]:
    """The retry decorator bound to the virtual clock and a seeded Random."""
    hooks = (events.append,) if events is not None else ()
    return retry(config, clock=clock, random=random.Random(SEED), hooks=hooks, stage="s")


@pytest.mark.anyio
async def test_retries_transient_errors_with_the_backoff_delays(clock: VirtualClock) -> None:
    """Attempts are spaced by exactly the backoff sequence, and the result comes back."""
    config = Retry(wait_initial=1.0, wait_max=10.0, wait_jitter="none")
    fn = Flaky(clock, TransientError("a"), TimeoutError(), ConnectionResetError())
    events: list[PolicyEvent] = []
    assert "ok" == await retrying(clock, config, events)(fn)()
    assert [0.0, 1.0, 3.0, 7.0] == fn.calls
    assert [(1, 1.0), (2, 2.0), (3, 4.0)] == [
        (e.attempt, e.delay) for e in events if isinstance(e, RetryScheduled)
    ]
    assert all(e.stage == "s" for e in events)


@pytest.mark.anyio
async def test_gives_up_after_attempts_and_reraises_the_last_error_unchanged(
    clock: VirtualClock,
) -> None:
    """When attempts run out the very last exception object propagates, with an event."""
    last = TransientError("third")
    fn = Flaky(clock, TransientError("first"), TransientError("second"), last)
    events: list[PolicyEvent] = []
    wrapped = retrying(clock, Retry(attempts=3, wait_jitter="none"), events)(fn)
    with pytest.raises(TransientError) as info:
        await wrapped()
    assert info.value is last
    assert 3 == len(fn.calls)
    gave_up = [e for e in events if isinstance(e, RetryGaveUp)]
    assert [(3, "attempts")] == [(e.attempts, e.reason) for e in gave_up]
    assert gave_up[0].error is last


@pytest.mark.anyio
async def test_deadline_stops_before_a_wait_that_would_cross_it(clock: VirtualClock) -> None:
    """No wait ends past the deadline: the retry gives up instead of sleeping uselessly."""
    config = Retry(attempts=None, timeout=10.0, wait_initial=1.0, wait_max=8.0, wait_jitter="none")
    fn = Flaky(clock, *[TransientError(str(i)) for i in range(20)])
    events: list[PolicyEvent] = []
    with pytest.raises(TransientError):
        await retrying(clock, config, events)(fn)()
    assert [0.0, 1.0, 3.0, 7.0] == fn.calls  # the next wait (8s) would end at 15 > 10
    assert "deadline" == events[-1].reason  # type: ignore[attr-defined]
    assert 7.0 == clock.monotonic()


@pytest.mark.anyio
async def test_retry_after_is_honoured(clock: VirtualClock) -> None:
    """A Retry-After longer than the backoff is waited out in full."""
    config = Retry(wait_initial=0.1, wait_max=30.0, wait_jitter="none")
    fn = Flaky(clock, TransientError("429", retry_after=12.0))
    events: list[PolicyEvent] = []
    assert "ok" == await retrying(clock, config, events)(fn)()
    assert [0.0, 12.0] == fn.calls
    assert 12.0 == events[0].retry_after  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_retry_after_beyond_wait_max_is_waited_in_full(clock: VirtualClock) -> None:
    """A Retry-After of 2 s under wait_max=1 s is retried after 2 s, never earlier."""
    config = Retry(wait_initial=0.1, wait_max=1.0, wait_jitter="none")
    fn = Flaky(
        clock, TransientError("429", retry_after=2.0), TransientError("429", retry_after=3.5)
    )
    events: list[PolicyEvent] = []
    assert "ok" == await retrying(clock, config, events)(fn)()
    assert [0.0, 2.0, 5.5] == fn.calls
    assert [2.0, 3.5] == [e.delay for e in events if isinstance(e, RetryScheduled)]


@pytest.mark.anyio
async def test_retry_after_past_the_deadline_gives_up(clock: VirtualClock) -> None:
    """A Retry-After longer than the time left ends the retries at once, saying why."""
    config = Retry(timeout=10.0, wait_initial=0.1, wait_max=60.0, wait_jitter="none")
    fn = Flaky(
        clock, TransientError("503", retry_after=4.0), TransientError("503", retry_after=30.0)
    )
    events: list[PolicyEvent] = []
    with pytest.raises(TransientError) as info:
        await retrying(clock, config, events)(fn)()
    assert [0.0, 4.0] == fn.calls
    assert 4.0 == clock.monotonic()  # gave up at once, without waiting
    gave_up = [e for e in events if isinstance(e, RetryGaveUp)]
    assert [("retry_after_exceeds_deadline", 2)] == [(e.reason, e.attempts) for e in gave_up]
    assert 30.0 == info.value.retry_after  # the last error, re-raised unchanged


@pytest.mark.anyio
async def test_retry_after_within_the_deadline_is_not_cut_by_it(clock: VirtualClock) -> None:
    """A Retry-After that fits the time left is waited in full even past wait_max."""
    config = Retry(timeout=10.0, wait_initial=0.1, wait_max=1.0, wait_jitter="none")
    fn = Flaky(clock, TransientError("503", retry_after=9.0))
    assert "ok" == await retrying(clock, config)(fn)()
    assert [0.0, 9.0] == fn.calls


@pytest.mark.anyio
async def test_budget_exhaustion_stops_retries_across_callers(clock: VirtualClock) -> None:
    """Two callers share a budget of two retries; the third retry is refused at once."""
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, capacity=2.0, clock=clock)
    config = Retry(attempts=5, wait_initial=1.0, wait_jitter="none", budget=budget)
    events: list[PolicyEvent] = []
    first = Flaky(clock, TransientError("a"), TransientError("b"))
    second = Flaky(clock, TransientError("c"), TransientError("d"))
    assert "ok" == await retrying(clock, config, events)(first)()
    with pytest.raises(TransientError, match="c"):
        await retrying(clock, config, events)(second)()
    assert 1 == len(second.calls)
    assert "budget" == events[-1].reason  # type: ignore[attr-defined]
    assert 0.0 == budget.tokens


def test_budget_refills_with_calls_and_time() -> None:
    """Deposits per call and the per-second refill both add tokens, up to capacity."""
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.5, min_per_second=0.1, capacity=3.0, clock=clock)
    assert all(budget.try_withdraw() for _ in range(3))
    assert not budget.try_withdraw()
    budget.deposit()
    budget.deposit()
    assert budget.try_withdraw()
    clock.advance(10.0)
    assert pytest.approx(1.0) == budget.tokens
    clock.advance(1000.0)
    assert 3.0 == budget.tokens


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        DataError("bad record"),
        CircuitOpenError("db", remaining=5.0),
        BulkheadFullError("db", max_concurrent=1, max_waiters=0),
        ValueError("a bug"),
    ],
)
async def test_never_retried(clock: VirtualClock, error: Exception) -> None:
    """Permanent errors, rejections and bugs propagate after a single attempt."""
    fn = Flaky(clock, error)
    with pytest.raises(type(error)) as info:
        await retrying(clock, Retry())(fn)()
    assert info.value is error
    assert 1 == len(fn.calls)


@pytest.mark.anyio
async def test_rejections_are_not_retried_even_if_registered_transient(
    clock: VirtualClock,
) -> None:
    """An open circuit stays unretried whatever the classifier says."""
    classifier = Classifier()
    classifier.register(CircuitOpenError, "transient")
    fn = Flaky(clock, CircuitOpenError("db", remaining=5.0))
    with pytest.raises(CircuitOpenError):
        await retrying(clock, Retry(classifier=classifier))(fn)()
    assert 1 == len(fn.calls)


@pytest.mark.anyio
async def test_custom_classifier_makes_an_error_retryable(clock: VirtualClock) -> None:
    """Registering a type as transient makes the retry retry it."""
    classifier = Classifier()
    classifier.register(KeyError, "transient")
    fn = Flaky(clock, KeyError("k"))
    assert "ok" == await retrying(clock, Retry(classifier=classifier))(fn)()
    assert 2 == len(fn.calls)


@pytest.mark.anyio
async def test_cancellation_is_never_retried(clock: VirtualClock) -> None:
    """A cancelled attempt ends the call; no second attempt starts."""
    attempts = 0

    async def hang() -> str:
        nonlocal attempts
        attempts += 1
        await clock.sleep(1000)
        return "late"

    wrapped = retrying(clock, Retry())(hang)
    async with anyio.create_task_group() as tg:
        tg.start_soon(wrapped)
        await clock.sleep(1)
        tg.cancel_scope.cancel()
    assert 1 == attempts


@pytest.mark.anyio
async def test_decorated_function_keeps_its_name(clock: VirtualClock) -> None:
    """The wrapper is transparent: name and docstring survive."""

    async def fetch() -> str:
        """Fetch it."""
        return "ok"

    wrapped = retrying(clock, Retry())(fetch)
    assert ("fetch", "Fetch it.") == (wrapped.__name__, wrapped.__doc__)
    assert "ok" == await wrapped()


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"attempts": 0}, "Retry.attempts"),
        ({"attempts": None, "timeout": None}, "Retry.attempts"),
        ({"timeout": 0}, "Retry.timeout"),
        ({"wait_initial": -1}, "Retry.wait_initial"),
        ({"wait_initial": 10, "wait_max": 1}, "Retry.wait_initial"),
        ({"wait_exp_base": 0.5}, "Retry.wait_exp_base"),
        ({"wait_jitter": "random"}, "Retry.wait_jitter"),
    ],
)
def test_invalid_config_names_the_option(options: dict[str, object], option: str) -> None:
    """An impossible retry policy is a ConfigError naming the option."""
    with pytest.raises(ConfigError) as info:
        Retry(**options)  # type: ignore[arg-type]
    assert option == info.value.option
