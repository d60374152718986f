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

``Retry-After`` is a floor: the retry waits at least what the server asks,
never less (``wait_max`` caps the backoff, not the server). A wait that would
end past the deadline is not started; when it is the server's that does not
fit, the policy gives up at once with ``retry_after_exceeds_deadline``.

An outage is not the record's failure. Behind a breaker that makes callers
wait (``on_open="wait"``), a failed half-open probe does not use up one of the
probing record's attempts (it is retried at once: the breaker, open again,
is the wait), and neither the time spent waiting for the breaker nor a failed
probe's own time counts against the retry deadline. However long the outage,
the record waits; only the stack's total ``timeout`` ends that wait.
"""

from __future__ import annotations

import functools
import inspect
import math
import random as _random_module
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, final

from riprap._core.clock import SYSTEM_CLOCK
from riprap._core.errors import BulkheadFullError, CircuitOpenError, ConfigError, DataError

from ._classify import DEFAULT_CLASSIFIER, Classifier, retry_after
from ._events import Emitter, GiveUpReason, PolicyHook, RetryGaveUp, RetryScheduled
from ._marks import attempts_of as attempts_of
from ._marks import mark_attempts, mark_gave_up, paused_of, probe_of
from ._scopes import check_duration, to_seconds

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
_REFUSED = (CircuitOpenError, BulkheadFullError)


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
            timeout does that), and time spent waiting for a circuit breaker
            (with its failed probes) does not count. ``None``: no deadline.
        wait_initial: The first backoff step (*base*).
        wait_max: The longest backoff wait (*cap*). A longer ``Retry-After``
            is still honoured in full.
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
        "_cap",
        "_classify",
        "_clock",
        "_config",
        "_emitter",
        "_random",
        "_timeout",
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
        self._timeout = None if config.timeout is None else to_seconds(config.timeout)
        self._cap = timeout_cap  # the stack's total timeout: breaker waits count there

    def wrap(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """``fn`` retried under this policy."""

        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            if self._budget is not None:  # as start() does, without its frame
                self._budget.deposit()
            started = self._clock.monotonic()
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # cancellation is a BaseException: never retried
                return await self.again(fn, args, kwargs, exc, started)

        return functools.wraps(fn)(call)

    def start(self) -> float:
        """Count a new call (not a retry) in the budget; the time it started."""
        if self._budget is not None:
            self._budget.deposit()
        return self._clock.monotonic()

    async def again(
        self,
        fn: Callable[..., Awaitable[T]],
        args: Any,
        kwargs: Any,
        exc: Exception,
        started: float,
    ) -> T:
        """Retry after the first attempt failed with ``exc``; the happy path never gets here."""
        tally = _Tally(started, ran=0 if isinstance(exc, _REFUSED) else 1)
        backoff = self._config.backoff(self._random)
        try:
            while True:
                delay = self._next_delay(exc, tally, backoff)
                if delay is None:
                    mark_attempts(exc, tally.ran)
                    raise exc
                await self._clock.sleep(delay)
                tally.ran += 1
                try:
                    return await fn(*args, **kwargs)
                except Exception as error:
                    exc = error
                    if isinstance(error, _REFUSED):
                        tally.ran -= 1  # refused before it ran
        except BaseException as stop:  # a total timeout or a stop: say what ran
            if stop is not exc:
                mark_attempts(stop, tally.ran)
            raise

    def _next_delay(self, exc: Exception, tally: _Tally, backoff: Iterator[float]) -> float | None:
        """The wait before the next attempt, or ``None`` to give up (events emitted)."""
        if isinstance(exc, _NEVER_RETRIED) or self._classify(exc) != "transient":
            return None
        tally.paused += paused_of(exc)
        probe = probe_of(exc)
        if not probe:
            tally.counted += 1
            if self._attempts is not None and tally.counted >= self._attempts:
                return self._give_up(exc, tally, "attempts")
        asked = retry_after(exc, now=self._clock.time())
        delay = 0.0 if probe else next(backoff)  # after a probe the open breaker is the wait
        if asked is not None:
            delay = max(delay, asked)  # never earlier than the server asks
        left = self._time_left(tally)
        # A wait ending at the deadline would leave no time for the attempt.
        if left is not None and (delay >= left or self._ends_past(tally, delay)):
            fits = asked is None or asked < left
            return self._give_up(exc, tally, "deadline" if fits else "retry_after_exceeds_deadline")
        if not probe and self._budget is not None and not self._budget.try_withdraw():
            return self._give_up(exc, tally, "budget")
        emitter = self._emitter
        if emitter.hooks:
            emitter.emit(
                RetryScheduled(
                    stage=emitter.stage,
                    dependency=emitter.dependency,
                    at=self._clock.monotonic(),
                    attempt=tally.ran,
                    delay=delay,
                    error=exc,
                    retry_after=asked,
                )
            )
        return delay

    def _ends_past(self, tally: _Tally, delay: float) -> bool:
        """Whether a wait of ``delay`` ends at or past a deadline, on the clock's own sums.

        ``delay >= left`` alone can miss by a rounding: 1.1 - 1.0 is a little
        more than 0.1, yet 1.0 + 0.1 is 1.1, and the attempt would start on
        the deadline.
        """
        elapsed = self._clock.monotonic() - tally.started
        if self._timeout is not None and elapsed - tally.paused + delay >= self._timeout:
            return True
        return self._cap is not None and elapsed + delay >= self._cap

    def _time_left(self, tally: _Tally) -> float | None:
        """Seconds to the nearer deadline: the retry's (breaker waits excluded) or the total."""
        elapsed = self._clock.monotonic() - tally.started
        left = None if self._timeout is None else self._timeout - (elapsed - tally.paused)
        if self._cap is not None:
            total = self._cap - elapsed
            left = total if left is None else min(left, total)
        return left

    def _give_up(self, exc: Exception, tally: _Tally, reason: GiveUpReason) -> float | None:
        """Record and announce giving up; ``None`` (no further wait), for ``_next_delay``."""
        # The exception is re-raised unchanged; what happened rides along for
        # the dead-letter envelope (see _marks).
        mark_gave_up(exc, reason)
        emitter = self._emitter
        if emitter.hooks:
            emitter.emit(
                RetryGaveUp(
                    stage=emitter.stage,
                    dependency=emitter.dependency,
                    at=self._clock.monotonic(),
                    attempts=tally.ran,
                    reason=reason,
                    error=exc,
                )
            )
        return None


@final
class _Tally:
    """One retried call's bookkeeping: attempts run and counted, time not charged."""

    __slots__ = ("counted", "paused", "ran", "started")

    def __init__(self, started: float, *, ran: int) -> None:
        self.started = started
        self.ran = ran  # attempts that reached the call
        self.counted = 0  # attempts counted against ``attempts`` (probes are not)
        self.paused = 0.0  # seconds of breaker waits and failed probes


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

    A plain ``def`` function is refused: wrapped, it would return a coroutine
    that its sync callers never await, so nothing would run or be retried.

    Raises:
        TypeError: When the decorated function is not an ``async def``
            function; it names the function.

    .. versionadded:: 0.1
    """
    clock = clock or SYSTEM_CLOCK
    layer = RetryLayer(
        config or Retry(),
        clock=clock,
        random=random or DEFAULT_RANDOM,
        emitter=Emitter(hooks, clock=clock, stage=stage, dependency=dependency),
    )

    def decorate(fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        _require_async(fn)
        return layer.wrap(fn)

    return decorate


def _require_async(fn: object) -> None:
    """Refuse a sync function (``def`` or ``lambda``) where a coroutine function is needed."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    plain = inspect.isfunction(target) or inspect.ismethod(target)
    if plain and not inspect.iscoroutinefunction(target):
        name = getattr(target, "__qualname__", repr(target))
        raise TypeError(
            f"@retry needs an async function, and {name} is not one: calling it would return "
            "a coroutine that nothing awaits; declare it 'async def' (a sync call that "
            "blocks belongs in a pipeline step with offload='thread' and retry=)"
        )
