"""Injectable time: policies and the runtime read the clock only through here (I8)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol, final, runtime_checkable

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable


@runtime_checkable
class Clock(Protocol):
    """Monotonic time for timeouts and backoff, wall time for timestamps, and sleep."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


@final
class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``anyio.sleep``."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def monotonic_of(clock: Clock) -> Callable[[], float]:
    """``clock.monotonic``; ``time.monotonic`` itself for the system clock (one frame less)."""
    return time.monotonic if isinstance(clock, SystemClock) else clock.monotonic
