"""``@retry`` refuses a sync function when it decorates it, instead of returning coroutines."""

from __future__ import annotations

import functools

import pytest

from riprap.policies import Retry, retry


def lookup(key: str) -> str:
    """A sync function: decorated, its callers would get coroutines they never await."""
    return key


async def fetch(key: str) -> str:
    """An async function, which ``@retry`` wraps."""
    return key


@pytest.mark.parametrize(
    ("fn", "name"),
    [(lookup, "lookup"), (lambda key: key, "<lambda>"), (functools.partial(lookup, "k"), "lookup")],
)
def test_sync_function_is_a_type_error_naming_it(fn: object, name: str) -> None:
    """At decoration time, with the function's name and what to do instead."""
    with pytest.raises(
        TypeError, match=rf"@retry needs an async function, and .*{name} is not one"
    ):
        retry(Retry(attempts=2))(fn)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_async_function_and_partial_are_wrapped() -> None:
    """Coroutine functions, also behind ``functools.partial``, are retried as before."""
    assert "a" == await retry(Retry(attempts=2))(fetch)("a")
    assert "b" == await retry(Retry(attempts=2))(functools.partial(fetch, "b"))()
