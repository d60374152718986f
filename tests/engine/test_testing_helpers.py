"""``riprap.testing.wait_until``: returns once a condition holds, fails in time naming it."""

from __future__ import annotations

import anyio
import pytest

from riprap.testing import wait_until

pytestmark = pytest.mark.anyio


async def test_wait_until_returns_once_another_task_makes_the_condition_true() -> None:
    """The wait yields to the event loop, so a task it waits on gets to run."""
    done: list[int] = []

    async def work() -> None:
        await anyio.sleep(0.01)
        done.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        await wait_until(lambda: bool(done))
    assert [1] == done


async def test_wait_until_times_out_naming_the_lambda() -> None:
    """A condition that never holds raises TimeoutError quoting the lambda's source line."""
    with pytest.raises(TimeoutError, match=r"waited 0\.02 s for .*lambda: 1 > 2"):
        await wait_until(lambda: 1 > 2, timeout=0.02)


async def test_wait_until_names_a_function_or_what_it_was_told() -> None:
    """A named function is named by its qualified name; ``what`` replaces it when given."""

    def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match=r"for .*\.never$"):
        await wait_until(never, timeout=0.01)
    with pytest.raises(TimeoutError, match=r"for the moon$"):
        await wait_until(never, timeout=0.01, what="the moon")
