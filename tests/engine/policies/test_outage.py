"""Outages behind a waiting breaker, in virtual time: records wait, whatever the outage's length."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from riprap import TransientError
from riprap.policies import (
    BreakerConfig,
    Bulkhead,
    CircuitBreaker,
    Policies,
    PolicyEvent,
    PolicyStack,
    Retry,
    RetryGaveUp,
    StageTimeout,
)

if TYPE_CHECKING:
    from riprap.testing import VirtualClock

pytestmark = pytest.mark.anyio

RETRY = Retry(attempts=4, timeout=5.0, wait_initial=0.1, wait_max=1.0, wait_jitter="none")
"""Backoff 0.1 + 0.2 + 0.4 s within a 5 s deadline: outages below are 10x that or more."""


class Dependency:
    """Fails every call until ``down_until`` (virtual seconds), then answers."""

    def __init__(self, clock: VirtualClock, down_until: float) -> None:
        self.clock = clock
        self.down_until = down_until
        self.calls: list[float] = []

    async def __call__(self, value: int) -> int:
        self.calls.append(self.clock.monotonic())
        await self.clock.sleep(0.01)
        if self.clock.monotonic() < self.down_until:
            raise TransientError("down")
        return value * 2


def breaker(clock: VirtualClock, *, probes: int = 1) -> CircuitBreaker:
    """Opens on its first failure; probes again every second."""
    config = BreakerConfig(
        window_size=1, minimum_calls=1, open_duration=1.0, half_open_probes=probes
    )
    return CircuitBreaker("scores", config, clock=clock)


async def test_waiting_records_outlive_an_outage_ten_times_their_retry_deadline(
    clock: VirtualClock,
) -> None:
    """Twenty records behind a waiting breaker all get through a 50 s outage; none gives up."""
    dependency = Dependency(clock, down_until=50.0)
    events: list[PolicyEvent] = []
    stack = PolicyStack(
        Policies(
            retry=RETRY, breaker=breaker(clock, probes=2), on_open="wait", bulkhead=Bulkhead(4)
        ),
        clock=clock,
        hooks=(events.append,),
    )
    call = stack.wrap(dependency)
    results: dict[int, int] = {}

    async def one(value: int) -> None:
        results[value] = await call(value)

    async with anyio.create_task_group() as tg:
        for value in range(20):
            tg.start_soon(one, value)
    assert {value: value * 2 for value in range(20)} == results
    assert [] == [e for e in events if isinstance(e, RetryGaveUp)]
    assert clock.monotonic() >= 50.0
    during = [at for at in dependency.calls if at < 50.0]
    # The four calls in flight when it failed, then two probes a second at most.
    assert len(during) <= 4 + 2 * 50


async def test_failed_probes_do_not_use_up_the_probing_records_attempts(
    clock: VirtualClock,
) -> None:
    """A lone record probes a dead dependency 30 times with two attempts, and still succeeds."""
    dependency = Dependency(clock, down_until=30.0)
    retry = Retry(attempts=2, timeout=5.0, wait_initial=0.1, wait_jitter="none")
    stack = PolicyStack(Policies(retry=retry, breaker=breaker(clock), on_open="wait"), clock=clock)
    assert 14 == await stack.wrap(dependency)(7)
    assert len(dependency.calls) >= 30  # the first call, then a probe a second
    assert 30.0 <= clock.monotonic() < 32.0


async def test_only_the_total_timeout_ends_the_wait(clock: VirtualClock) -> None:
    """Behind a waiting breaker the record gives up when the stack's total timeout passes."""
    dependency = Dependency(clock, down_until=1000.0)
    stack = PolicyStack(
        Policies(timeout=40.0, retry=RETRY, breaker=breaker(clock), on_open="wait"), clock=clock
    )
    with pytest.raises(StageTimeout) as info:
        await stack.wrap(dependency)(7)
    assert ("total", 40.0) == (info.value.kind, clock.monotonic())
