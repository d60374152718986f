"""A timeout layer's shared timer: each deadline passes at its own time, in start order.

The timer's clock is replaced by a counter the test moves, and the timer is
fired by hand: what passed is exactly the deadlines started a duration ago.
"""

from __future__ import annotations

import asyncio

import pytest

from riprap.policies._deadlines import DeadlineWatch

pytestmark = pytest.mark.anyio


async def test_only_the_deadlines_that_passed_expire_and_the_timer_waits_for_the_next() -> None:
    """Three calls started at 0, 10 and 20 s with 30 s each: at 35 s only the first expires."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(asyncio.sleep(3600)) for _ in range(3)]
    deadlines = DeadlineWatch(30.0).on(loop)
    now = [0.0]
    deadlines.now = lambda: now[0]
    keys: list[int] = []
    for start in (0.0, 10.0, 20.0):
        now[0] = start
        keys.append(deadlines.start(tasks[len(keys)]))
    ended = keys.pop(1)  # the second call ends before its deadline
    assert deadlines.stop(ended) is None
    now[0] = 35.0
    deadlines.fire()
    await asyncio.sleep(0)
    assert [True, False, False] == [t.cancelled() for t in tasks]
    assert [keys[0]] == list(deadlines.expired)
    assert [keys[1]] == list(deadlines.pending)
    assert deadlines.handle is not None  # armed again, for the third call's deadline
    passed = deadlines.stop(keys[0])
    assert passed is not None
    assert 1 == passed.fired
    assert deadlines.stop(keys[1]) is None
    assert {} == deadlines.pending
    assert {} == deadlines.expired
    deadlines.handle.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
