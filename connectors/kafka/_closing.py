"""Stopping aiokafka clients within a bound: a dead broker cannot hold up the end of a run.

aiokafka's ``stop()`` talks to the broker (a consumer leaves its group, a
producer sends what it holds), retrying for as long as its request timeout,
and a consumer's ``stop()`` can let out a ``CancelledError`` of its own (a
fetch task it cancelled itself). Neither may reach the run: the stop is given
:data:`CLOSE_TIMEOUT` seconds, then the client is abandoned (logged), and a
cancellation that is not the caller's is logged as what it is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("riprap.connectors.kafka")

CLOSE_TIMEOUT = 10.0
"""Seconds a Kafka client gets to stop before it is abandoned."""


async def stop_client(
    stop: Callable[[], Awaitable[None]], name: str, bound: float = CLOSE_TIMEOUT
) -> None:
    """Await ``stop()`` for at most ``bound`` seconds; ``name`` says whose client in the log.

    Raises:
        asyncio.CancelledError: Only when the caller itself is cancelled.
    """
    task = asyncio.current_task()
    with anyio.move_on_after(bound) as scope:
        try:
            await stop()
        except asyncio.CancelledError:
            if task is None or task.cancelling():
                raise  # the caller's own cancellation (or the bound's)
            log.warning(
                "%s: the Kafka client's stop ended in a cancellation of its own (a task of "
                "the client's); it is closed",
                name,
            )
    if scope.cancelled_caught:
        log.warning(
            "%s: the Kafka client did not stop within %s s (is the broker reachable?); "
            "it is abandoned",
            name,
            bound,
        )
