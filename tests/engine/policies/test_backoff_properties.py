"""Property tests: retry waits stay within [0, wait_max] and never cross the deadline."""

from __future__ import annotations

import contextlib
import itertools
import random
from typing import get_args

import anyio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from riprap import TransientError
from riprap.policies import Jitter, Retry, retry
from riprap.testing import VirtualClock

jitters = st.sampled_from(get_args(Jitter))
waits = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@st.composite
def configs(draw: st.DrawFn, *, bounded: bool = False) -> Retry:
    """Any valid Retry configuration (``bounded``: with an attempt limit)."""
    wait_initial = draw(waits)
    wait_max = draw(st.floats(min_value=wait_initial, max_value=200.0, allow_nan=False))
    attempts = st.integers(min_value=1, max_value=30)
    return Retry(
        attempts=draw(attempts if bounded else st.none() | attempts),
        timeout=draw(st.floats(min_value=0.001, max_value=1000.0, allow_nan=False)),
        wait_initial=wait_initial,
        wait_max=wait_max,
        wait_exp_base=draw(st.floats(min_value=1.0, max_value=10.0, allow_nan=False)),
        wait_jitter=draw(jitters),
    )


@settings(max_examples=300, deadline=None)
@given(config=configs(), seed=st.integers(), n=st.integers(min_value=1, max_value=200))
def test_backoff_delays_stay_between_zero_and_wait_max(config: Retry, seed: int, n: int) -> None:
    """Every backoff delay, for any configuration and seed, is in [0, wait_max]."""
    cap = float(config.wait_max)  # type: ignore[arg-type]
    for delay in itertools.islice(config.backoff(random.Random(seed)), n):
        assert 0.0 <= delay <= cap


@settings(max_examples=150, deadline=None)
@given(
    # Attempts are bounded: a failing call takes no virtual time, so zero waits
    # with no attempt limit would never reach the deadline.
    config=configs(bounded=True),
    seed=st.integers(),
    hints=st.lists(st.none() | st.floats(min_value=0, max_value=500, allow_nan=False), max_size=40),
)
def test_retries_respect_limits_and_deadline(
    config: Retry, seed: int, hints: list[float | None]
) -> None:
    """Under an always-failing call: backoff within [0, wait_max], attempts within limits,
    Retry-After honoured in full (never retried early), no attempt after the deadline."""
    starts: list[float] = []
    asked: list[float | None] = []

    async def main() -> None:
        clock = VirtualClock()

        async def failing() -> None:
            starts.append(clock.monotonic())
            hint = hints[len(starts) % len(hints)] if hints else None
            asked.append(hint)
            raise TransientError("down", retry_after=hint)

        wrapped = retry(config, clock=clock, random=random.Random(seed))(failing)
        async with clock.autojump():
            try:
                await wrapped()
            except TransientError:
                pass
            else:  # pragma: no cover
                raise AssertionError("an always-failing call succeeded")

    anyio.run(main)
    cap = float(config.wait_max)  # type: ignore[arg-type]
    deadline = float(config.timeout)  # type: ignore[arg-type]
    assert config.attempts is None or len(starts) <= config.attempts
    assert all(start < deadline for start in starts)
    for gap, hint in zip((b - a for a, b in itertools.pairwise(starts)), asked, strict=False):
        assert 0.0 <= gap <= (cap if hint is None else max(cap, hint)) + 1e-9
        if hint is not None:
            assert gap >= hint - 1e-9


@settings(max_examples=100, deadline=None)
@given(
    jitter=jitters,
    seed=st.integers(),
    timeout=st.floats(min_value=0.5, max_value=200.0, allow_nan=False),
    wait_max=st.floats(min_value=0.0, max_value=50.0, allow_nan=False),
    cost=st.floats(min_value=0.5, max_value=5.0, allow_nan=False),
)
# 1.1 - 1.0 is a little over 0.1, but 1.0 + 0.1 is 1.1: the wait ends on the deadline.
@example(jitter="none", seed=0, timeout=1.1, wait_max=1.0, cost=1.0)
def test_deadline_alone_bounds_unlimited_attempts(
    jitter: str, seed: int, timeout: float, wait_max: float, cost: float
) -> None:
    """With no attempt limit, waits never end past the deadline and attempts stop there."""
    starts: list[float] = []
    config = Retry(
        attempts=None,
        timeout=timeout,
        wait_initial=min(0.1, wait_max),
        wait_max=wait_max,
        wait_jitter=jitter,  # type: ignore[arg-type]
    )

    async def main() -> None:
        clock = VirtualClock()

        async def slow_failure() -> None:
            starts.append(clock.monotonic())
            await clock.sleep(cost)
            raise TransientError("down")

        wrapped = retry(config, clock=clock, random=random.Random(seed))(slow_failure)
        async with clock.autojump():
            with contextlib.suppress(TransientError):
                await wrapped()

    anyio.run(main)
    assert all(start < timeout for start in starts)
    # It gave up only because the next wait (at most wait_max) would have crossed the deadline.
    assert starts[-1] + cost + wait_max >= timeout
