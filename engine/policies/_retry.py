"""Retry: exponential backoff with jitter, a deadline, Retry-After, and a shared budget.

Backoff follows the AWS Architecture Blog's "Exponential Backoff And Jitter"
definitions, with ``wait_initial`` as *base*, ``wait_max`` as *cap* and
``wait_exp_base`` as the growth factor (2 in the article). For the n-th retry
(n = 0 first), with ``exp = min(cap, base * wait_exp_base ** n)``:

* ``"none"``: ``exp``
* ``"full"``: ``uniform(0, exp)``
* ``"equal"``: ``exp / 2 + uniform(0, exp / 2)``
* ``"decorrelated"``: ``min(cap, uniform(base, previous * 3))``, starting from
  ``previous = base`` (the article's fixed factor 3)

Only errors the classifier calls ``"transient"`` are retried; cancellation,
:class:`~riprap.policies.CircuitOpenError`, :class:`~riprap.policies.BulkheadFullError` and
:class:`~riprap.DataError` never are. When the policy gives up it re-raises the
last exception unchanged and emits :class:`~riprap.policies.RetryGaveUp` with
the attempt count.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random as _random_module
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, final

from riprap._core.clock import SYSTEM_CLOCK
from riprap._core.errors import BulkheadFullError, CircuitOpenError, ConfigError, DataError

from ._classify import DEFAULT_CLASSIFIER, Classifier, retry_after
from ._events import Emitter, GiveUpReason, PolicyHook, RetryGaveUp, RetryScheduled
from ._timeout import check_duration, to_seconds

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
    from datetime import timedelta

    from riprap._core.clock import Clock

P = ParamSpec("P")
"""The parameters of the wrapped call."""
T = TypeVar("T")
"""The result of the wrapped call."""

Jitter = Literal["full", "equal", "decorrelated", "none"]
"""How randomness spreads retry delays (see the module docstring)."""

_JITTERS: frozenset[str] = frozenset(("full", "equal", "decorrelated", "none"))
_NEVER_RETRIED = (CircuitOpenError, BulkheadFullError, DataError)


class RandomSource(Protocol):
    """The part of :class:`random.Random` the policies use.

    .. versionadded:: 0.1
    """

    def uniform(self, a: float, b: float, /) -> float: ...


DEFAULT_RANDOM = _random_module.Random()
"""The randomness policies use unless given a seeded ``random.Random``."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class Retry:
    """How to retry a call. Immutable; share one between stages freely.

    Attributes:
        attempts: Maximum number of attempts, the first call included
            (``None``: limited by ``timeout`` only).
        timeout: Deadline for all attempts together, from the first call: a
            wait that would end at or after it is not started and the last
            error is re-raised. It never interrupts an attempt (the stack's total
            timeout does that). ``None``: no deadline.
        wait_initial: The first backoff step (*base*).
        wait_max: The longest single wait (*cap*), also the cap on Retry-After.
        wait_exp_base: Growth factor of the exponential backoff.
        wait_jitter: ``"full"``, ``"equal"``, ``"decorrelated"`` or ``"none"``.
        budget: A :class:`RetryBudget` shared by every caller of a dependency;
            when it is empty, retries stop at once.
        classifier: Decides which errors are transient.

    Raises:
        ConfigError: If a value is out of range or no limit is set at all.

    .. versionadded:: 0.1
    """

    attempts: int | None = 10
    timeout: float | timedelta | None = 45.0
    wait_initial: float | timedelta = 0.1
    wait_max: float | timedelta = 5.0
    wait_exp_base: float = 2.0
    wait_jitter: Jitter = "full"
    budget: RetryBudget | None = None
    classifier: Classifier = field(default=DEFAULT_CLASSIFIER, repr=False)

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ConfigError("Retry.attempts", f"must be >= 1, got {self.attempts!r}")
        if self.attempts is None and self.timeout is None:
            raise ConfigError("Retry.attempts", "attempts and timeout cannot both be None")
        check_duration("Retry.timeout", self.timeout)
        check_duration("Retry.wait_initial", self.wait_initial, zero=True)
        check_duration("Retry.wait_max", self.wait_max, zero=True)
        if to_seconds(self.wait_initial) > to_seconds(self.wait_max):
            raise ConfigError("Retry.wait_initial", "must not exceed wait_max")
        if not 1.0 <= self.wait_exp_base < math.inf:
            raise ConfigError("Retry.wait_exp_base", f"must be >= 1, got {self.wait_exp_base!r}")
        if self.wait_jitter not in _JITTERS:
            raise ConfigError("Retry.wait_jitter", f"must be one of {sorted(_JITTERS)}")

    def backoff(self, random: RandomSource | None = None) -> Iterator[float]:
        """The endless sequence of waits before retry 1, 2, ... (Retry-After aside)."""
        rng = random or DEFAULT_RANDOM
        base = to_seconds(self.wait_initial)
        cap = to_seconds(self.wait_max)
        if self.wait_jitter == "decorrelated":
            return _decorrelated(rng, base, cap)
        return _exponential(rng, base, cap, self.wait_exp_base, self.wait_jitter)


def _exponential(
    rng: RandomSource, base: float, cap: float, factor: float, jitter: Jitter
) -> Iterator[float]:
    exp = min(cap, base)
    while True:
        if jitter == "full":
            yield rng.uniform(0.0, exp)
        elif jitter == "equal":
            yield exp / 2 + rng.uniform(0.0, exp / 2)
        else:
            yield exp
        exp = min(cap, exp * factor)  # grows step by step, so it never overflows


def _decorrelated(rng: RandomSource, base: float, cap: float) -> Iterator[float]:
    sleep = base
    while True:
        sleep = min(cap, rng.uniform(base, sleep * 3))
        yield sleep


@final
class RetryBudget:
    """A token bucket that caps retries across every worker that shares it.

    It starts full with ``capacity`` tokens. Each call deposits ``ratio``
    tokens, time adds ``min_per_second`` tokens per second (so a quiet stage can
    still retry), and each retry withdraws one. With the bucket empty a retry
    is refused and the caller gives up at once, so during an outage the retry
    traffic stays near ``ratio`` times the call rate instead of multiplying it.

    Args:
        ratio: Tokens deposited per call (0.1 allows about one retry per ten calls).
        min_per_second: Tokens added per second regardless of traffic.
        capacity: Maximum tokens stored, and the initial fill.
        clock: Clock for the time-based refill.

    Raises:
        ConfigError: If a value is negative or ``capacity`` is below one token.

    .. versionadded:: 0.1
    """

    __slots__ = ("_clock", "_refilled_at", "_tokens", "capacity", "min_per_second", "ratio")

    def __init__(
        self,
        *,
        ratio: float = 0.1,
        min_per_second: float = 1.0,
        capacity: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if ratio < 0 or min_per_second < 0:
            raise ConfigError("RetryBudget", "ratio and min_per_second must be >= 0")
        if capacity < 1:
            raise ConfigError("RetryBudget.capacity", f"must be >= 1, got {capacity!r}")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.capacity = capacity
        self._clock = clock or SYSTEM_CLOCK
        self._tokens = capacity
        self._refilled_at = self._clock.monotonic()

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def deposit(self) -> None:
        """Record one call (not a retry)."""
        self._tokens = min(self.capacity, self._tokens + self.ratio)

    def try_withdraw(self) -> bool:
        """Take a token for one retry; ``False`` when the budget is exhausted."""
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = now - self._refilled_at
        self._refilled_at = now
        if elapsed > 0 and self.min_per_second:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.min_per_second)


@final
class RetryLayer:
    """The retry policy of a stack, bound to a clock, randomness and hooks."""

    __slots__ = (
        "_attempts",
        "_budget",
        "_classify",
        "_clock",
        "_config",
        "_emitter",
        "_random",
        "_timeout",
        "_wait_max",
    )

    def __init__(
        self,
        config: Retry,
        *,
        clock: Clock,
        random: RandomSource,
        emitter: Emitter,
        timeout_cap: float | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._random = random
        self._emitter = emitter
        self._attempts = config.attempts
        self._budget = config.budget
        self._classify = config.classifier.classify
        self._wait_max = to_seconds(config.wait_max)
        limits = [to_seconds(t) for t in (config.timeout, timeout_cap) if t is not None]
        self._timeout = min(limits) if limits else None

    def wrap(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """``fn`` retried under this policy."""

        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            if self._budget is not None:
                self._budget.deposit()
            started = self._clock.monotonic()
            backoff: Iterator[float] | None = None
            attempt = 1
            while True:
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:  # cancellation is a BaseException: never retried
                    if backoff is None:
                        backoff = self._config.backoff(self._random)
                    delay = self._next_delay(exc, attempt, started, backoff)
                    if delay is None:
                        raise
                await self._clock.sleep(delay)
                attempt += 1

        return functools.wraps(fn)(call)

    def _next_delay(
        self, exc: Exception, attempt: int, started: float, backoff: Iterator[float]
    ) -> float | None:
        """The wait before the next attempt, or ``None`` to give up (events emitted)."""
        if isinstance(exc, _NEVER_RETRIED) or self._classify(exc) != "transient":
            return None
        if self._attempts is not None and attempt >= self._attempts:
            self._give_up(exc, attempt, "attempts")
            return None
        delay = next(backoff)
        asked = retry_after(exc, now=self._clock.time())
        if asked is not None:
            delay = min(max(delay, asked), self._wait_max)
        # A wait ending at the deadline would leave no time for the attempt.
        if self._timeout is not None and (
            self._clock.monotonic() + delay >= started + self._timeout
        ):
            self._give_up(exc, attempt, "deadline")
            return None
        if self._budget is not None and not self._budget.try_withdraw():
            self._give_up(exc, attempt, "budget")
            return None
        emitter = self._emitter
        if emitter.hooks:
            emitter.emit(
                RetryScheduled(
                    stage=emitter.stage,
                    dependency=emitter.dependency,
                    at=self._clock.monotonic(),
                    attempt=attempt,
                    delay=delay,
                    error=exc,
                    retry_after=asked,
                )
            )
        return delay

    def _give_up(self, exc: Exception, attempts: int, reason: GiveUpReason) -> None:
        # The exception is re-raised unchanged; the attempt count rides along for
        # the dead-letter envelope (see attempts_of).
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, _ATTEMPTS_ATTR, attempts)
        emitter = self._emitter
        if emitter.hooks:
            emitter.emit(
                RetryGaveUp(
                    stage=emitter.stage,
                    dependency=emitter.dependency,
                    at=self._clock.monotonic(),
                    attempts=attempts,
                    reason=reason,
                    error=exc,
                )
            )


def retry(
    config: Retry | None = None,
    /,
    *,
    clock: Clock | None = None,
    random: RandomSource | None = None,
    hooks: Iterable[PolicyHook] = (),
    stage: str | None = None,
    dependency: str | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorator: retry the async function under ``config`` (default :class:`Retry`).

    Example::

        @retry(Retry(attempts=5, wait_max=2.0))
        async def fetch(url: str) -> bytes: ...

    The decorated function re-raises the last exception unchanged when it
    gives up; hooks receive :class:`RetryScheduled` and :class:`RetryGaveUp`.

    .. versionadded:: 0.1
    """
    clock = clock or SYSTEM_CLOCK
    layer = RetryLayer(
        config or Retry(),
        clock=clock,
        random=random or DEFAULT_RANDOM,
        emitter=Emitter(hooks, clock=clock, stage=stage, dependency=dependency),
    )
    return layer.wrap


_ATTEMPTS_ATTR = "_riprap_attempts"


def attempts_of(exc: BaseException) -> int:
    """How many attempts a retry policy made before giving up with ``exc`` (1 if none did)."""
    attempts = getattr(exc, _ATTEMPTS_ATTR, 1)
    return attempts if isinstance(attempts, int) else 1
