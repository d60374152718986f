"""The policy stack: every resilience policy of a stage, composed in the fixed order.

Outermost first::

    fallback -> total timeout -> retry -> bulkhead -> breaker check -> attempt timeout -> call

Why this order: the total timeout bounds everything, retries and their waits
included. Retry sits outside the breaker, so every attempt is one call the
breaker sees, and an open breaker stops the retries (its error is never
retried). The breaker is asked after the bulkhead: a permit taken before
queueing for a slot would be stale by the time the call goes out, and a
queue of callers holding closed-state permits would all reach a dependency
the breaker has cut off meanwhile. An open breaker still refuses (or holds
back) callers before they queue, so it takes no slot, and a full bulkhead is
not counted against the dependency (see ``_admission``). The attempt timeout
is innermost, so time spent waiting for a slot or the breaker is not charged
to the attempt, and a timed-out attempt is a transient failure the breaker
counts and the retry retries. By default it runs the call sheltered in a task
of its own, so that a call that ignores cancellation can be abandoned after a
grace period (see ``_shelter``). The fallback sees only what is left.

Each policy wraps an async callable and returns one with the same signature;
the stack walks its layers in reverse to build the chain once per wrapped
function, so a call costs one function frame per layer and no allocation
beyond what the policies themselves need. A stack of two layers or more puts
a fused path in front of that chain (see ``_fused``): while every layer is
idle (the breaker closed, a bulkhead slot free), a call runs all of them
inline in one frame, and takes the chain the moment one is not.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, final

from riprap._core.clock import SYSTEM_CLOCK, SystemClock
from riprap._core.errors import ConfigError

from ._admission import admission
from ._events import Emitter, PolicyHook
from ._fallback import FallbackFn, falls_back, with_fallback
from ._fused import fuse
from ._retry import DEFAULT_RANDOM, RandomSource, Retry, RetryLayer
from ._shelter import Shelter
from ._timeout import TimeoutLayer, check_duration, to_seconds

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterable
    from datetime import timedelta

    from riprap._core.clock import Clock

    from ._breaker import BreakerStatistics, CircuitBreaker
    from ._bulkhead import Bulkhead, BulkheadStatistics

P = ParamSpec("P")
"""The parameters of the wrapped call."""
T = TypeVar("T")
"""The result of the wrapped call."""


class Layer(Protocol):
    """One policy of a stack: wraps an async callable, keeping its signature.

    .. versionadded:: 0.1
    """

    def wrap(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class Policies:
    """Which policies a stage's calls go through; each is optional.

    Attributes:
        timeout: Total time for the call, retries and waits included; the
            call is cancelled and :class:`~riprap.policies.StageTimeout` (``kind="total"``)
            raised when it passes. It also caps the retry deadline, so a retry
            does not start a wait it cannot finish.
        retry: The retry policy.
        breaker: The circuit breaker of the dependency (shared object).
        on_open: ``"raise"`` fails fast with :class:`~riprap.policies.CircuitOpenError`;
            ``"wait"`` waits for the breaker to admit the call (backpressure;
            the wait counts against ``timeout``).
        bulkhead: The bulkhead limiting concurrent calls (shared object).
        attempt_timeout: Time for one attempt; a timed-out attempt raises
            :class:`~riprap.policies.StageTimeout` (``kind="attempt"``), which is retried.
        attempt_grace: How long a call that ignores its attempt timeout's
            cancellation is cancelled again (every 50 ms) before it is
            abandoned: its caller moves on (the attempt timed out, the bulkhead
            slot is free) and its task is left to the stack's
            :class:`~riprap.policies.Shelter`, logged and counted. Each attempt
            then runs in a task of its own (a few microseconds a call).
            ``None`` (the default): the attempt runs in the caller's task, is
            cancelled again until it ends, and can never be abandoned. Set a
            grace for dependencies known to swallow cancellation: running each
            attempt in its own task costs about 3 µs a call, which the default
            does not pay.

    Raises:
        ConfigError: If a timeout is not positive, the grace is negative,
            ``on_open`` is unknown, or ``on_open="wait"`` is given without a breaker.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``attempt_grace``; the breaker is asked after the bulkhead.
    """

    timeout: float | timedelta | None = None
    retry: Retry | None = None
    breaker: CircuitBreaker | None = None
    on_open: Literal["raise", "wait"] = "raise"
    bulkhead: Bulkhead | None = None
    attempt_timeout: float | timedelta | None = None
    attempt_grace: float | timedelta | None = None

    def __post_init__(self) -> None:
        check_duration("Policies.timeout", self.timeout)
        check_duration("Policies.attempt_timeout", self.attempt_timeout)
        check_duration("Policies.attempt_grace", self.attempt_grace, zero=True)
        if self.on_open not in ("raise", "wait"):
            raise ConfigError("Policies.on_open", "must be 'raise' or 'wait'")
        if self.on_open == "wait" and self.breaker is None:
            raise ConfigError("Policies.on_open", "'wait' needs a breaker")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyStatistics:
    """A snapshot of a stack's stateful policies.

    Attributes:
        stage: The stack's stage.
        dependency: The dependency it calls.
        breaker: The breaker's statistics, if it has one.
        bulkhead: The bulkhead's statistics, if it has one.
        retry_budget_tokens: Tokens left in the retry budget, if it has one.
        abandoned_calls: Calls abandoned by the stack's shelter (a pipeline
            shares one among its stages: the count is theirs together).

    .. versionadded:: 0.1
    """

    stage: str | None
    dependency: str | None
    breaker: BreakerStatistics | None
    bulkhead: BulkheadStatistics | None
    retry_budget_tokens: float | None
    abandoned_calls: int = 0


@final
class _AdmissionLayer:
    __slots__ = ("breaker", "bulkhead", "stage", "wait")

    def __init__(
        self,
        breaker: CircuitBreaker | None,
        bulkhead: Bulkhead | None,
        *,
        wait: bool,
        stage: str | None,
    ) -> None:
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.wait = wait
        self.stage = stage

    def wrap(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        return admission(
            fn, breaker=self.breaker, bulkhead=self.bulkhead, wait=self.wait, stage=self.stage
        )


@final
class PolicyStack:
    """A stage's :class:`Policies` bound to its name, clock, randomness and hooks.

    Args:
        policies: What to apply (default: nothing, calls pass straight through).
        stage: The stage name every event carries.
        dependency: The dependency name events carry (default: the breaker's,
            else the bulkhead's name).
        clock: Time for timeouts and backoff; must be the breaker's clock.
        random: Randomness for jitter (a seeded ``random.Random`` in tests).
        hooks: Receive every event of the stack. They are also registered on
            the breaker and the bulkhead (once, however many stacks share
            them), so state changes and rejections reach them as well.
        shelter: Owns the attempts abandoned by the attempt timeout (default:
            one of the stack's own; a pipeline run shares one among its stacks).

    Raises:
        ConfigError: If the breaker runs on a different clock.

    Example::

        stack = PolicyStack(
            Policies(timeout=30, retry=Retry(attempts=5), breaker=payments, attempt_timeout=2),
            stage="enrich",
        )
        charge = stack.wrap(client.charge, fallback=defer_charge)
        receipt = await charge(order_id, amount)

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_admission",
        "_attempt",
        "_emitter",
        "_layers",
        "_retry",
        "_total",
        "clock",
        "dependency",
        "policies",
        "shelter",
        "stage",
    )

    def __init__(
        self,
        policies: Policies | None = None,
        *,
        stage: str | None = None,
        dependency: str | None = None,
        clock: Clock | None = None,
        random: RandomSource | None = None,
        hooks: Iterable[PolicyHook] = (),
        shelter: Shelter | None = None,
    ) -> None:
        self.policies = policies = policies or Policies()
        self.stage = stage
        self.shelter = shelter or Shelter()
        self.clock = clock = clock or SYSTEM_CLOCK
        breaker, bulkhead = policies.breaker, policies.bulkhead
        if breaker is not None and not _same_clock(breaker.clock, clock):
            raise ConfigError("PolicyStack.clock", f"differs from breaker {breaker.name!r}'s clock")
        if dependency is None:
            dependency = breaker.name if breaker else bulkhead.name if bulkhead else None
        self.dependency = dependency
        hooks = tuple(hooks)
        self._emitter = Emitter(hooks, clock=clock, stage=stage, dependency=dependency)
        for hook in hooks:
            if breaker is not None:
                breaker.add_hook(hook)
            if bulkhead is not None:
                bulkhead.add_hook(hook)
        self._build(random or DEFAULT_RANDOM)

    def _build(self, random: RandomSource) -> None:
        """The layers, outermost first (the fallback is added per wrapped function)."""
        p, clock, stage, dep = self.policies, self.clock, self.stage, self.dependency
        self._total: TimeoutLayer | None = None
        self._retry: RetryLayer | None = None
        self._admission: _AdmissionLayer | None = None
        self._attempt: TimeoutLayer | None = None
        if p.timeout is not None:
            self._total = TimeoutLayer(
                p.timeout, clock=clock, kind="total", stage=stage, dependency=dep
            )
        if p.retry is not None:
            cap = None if p.timeout is None else to_seconds(p.timeout)
            self._retry = RetryLayer(
                p.retry, clock=clock, random=random, emitter=self._emitter, timeout_cap=cap
            )
        if p.breaker is not None or p.bulkhead is not None:
            wait = p.on_open == "wait"
            self._admission = _AdmissionLayer(p.breaker, p.bulkhead, wait=wait, stage=stage)
        if p.attempt_timeout is not None:
            self._attempt = TimeoutLayer(
                p.attempt_timeout,
                clock=clock,
                kind="attempt",
                stage=stage,
                dependency=dep,
                grace=p.attempt_grace,
                shelter=self.shelter,
                emitter=self._emitter,
            )
        layers = (self._total, self._retry, self._admission, self._attempt)
        self._layers: tuple[Layer, ...] = tuple(layer for layer in layers if layer is not None)

    def wrap(
        self,
        fn: Callable[P, Awaitable[T]],
        /,
        *,
        fallback: FallbackFn[P, T] | None = None,
        fallback_on: Callable[[Exception], bool] = falls_back,
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        """``fn`` behind every policy of the stack; wrap once, call many times.

        Args:
            fn: The async callable (a dependency call, a stage function).
            fallback: ``async def fallback(error, *args, **kwargs)`` giving a
                degraded result when the call fails for good.
            fallback_on: Which errors the fallback replaces (default: transient
                ones, which include timeouts and rejections).

        Returns:
            An async callable with ``fn``'s signature, name and docstring.
        """
        call = _coroutine_function(fn)
        wrapped = attempted = retried = call
        for layer in reversed(self._layers):
            if layer is self._retry:
                retried = wrapped  # what the retry repeats: admission and attempt
            wrapped = layer.wrap(wrapped)
            if layer is self._attempt:
                attempted = wrapped  # the call under its attempt timeout
        if fallback is not None:
            wrapped = with_fallback(wrapped, fallback, on=fallback_on, emitter=self._emitter)
        if self._fusable(fallback is not None):
            wrapped = self._fuse(call, wrapped, attempted, retried, fallback, fallback_on)
        if wrapped is not fn:
            functools.update_wrapper(wrapped, fn)
        return wrapped

    def _fuse(
        self,
        call: Callable[P, Coroutine[Any, Any, T]],
        layered: Callable[P, Coroutine[Any, Any, T]],
        attempted: Callable[P, Coroutine[Any, Any, T]],
        retried: Callable[P, Coroutine[Any, Any, T]],
        fallback: FallbackFn[P, T] | None,
        fallback_on: Callable[[Exception], bool],
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        """The fused path in front of ``layered`` (see ``_fused``)."""
        attempt = self._attempt if self._attempt is not None and self._attempt.inline else None
        admission = self._admission
        return fuse(
            call if attempt is not None else attempted,  # an attempt in a task stays a layer
            layered,
            retried,
            total=self._total,
            retry=self._retry,
            breaker=None if admission is None else admission.breaker,
            bulkhead=None if admission is None else admission.bulkhead,
            wait=admission is not None and admission.wait,
            stage=self.stage,
            attempt=attempt,
            fallback=fallback,
            fallback_on=fallback_on,
            emitter=self._emitter,
        )

    def _fusable(self, fallback: bool) -> bool:
        """Whether ``wrap`` runs idle calls on the fused path (see ``_fused``).

        It pays with two layers or more, and needs a total timeout (if any)
        that runs in the caller's task.
        """
        if self._total is not None and not self._total.inline:
            return False
        return len(self._layers) + fallback >= 2

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` through the stack (builds the chain each time)."""
        return await self.wrap(fn)(*args, **kwargs)

    def statistics(self) -> PolicyStatistics:
        """A snapshot of the breaker, the bulkhead and the retry budget."""
        p = self.policies
        budget = p.retry.budget if p.retry is not None else None
        return PolicyStatistics(
            stage=self.stage,
            dependency=self.dependency,
            breaker=p.breaker.statistics() if p.breaker is not None else None,
            bulkhead=p.bulkhead.statistics() if p.bulkhead is not None else None,
            retry_budget_tokens=budget.tokens if budget is not None else None,
            abandoned_calls=self.shelter.abandoned,
        )

    def __repr__(self) -> str:
        return f"PolicyStack(stage={self.stage!r}, dependency={self.dependency!r})"


def _coroutine_function(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """``fn`` itself if calling it gives a coroutine, else a thin ``async def`` around it."""
    if inspect.iscoroutinefunction(fn):
        return fn
    if not inspect.isfunction(fn) and inspect.iscoroutinefunction(type(fn).__call__):
        return fn  # type: ignore[return-value]  # an instance whose __call__ is async def

    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return await fn(*args, **kwargs)

    return call


def _same_clock(a: Clock, b: Clock) -> bool:
    return a is b or (isinstance(a, SystemClock) and isinstance(b, SystemClock))
