"""Policy events and the hooks that receive them.

Every retry, give-up, breaker state change, rejection, fallback and abandoned
call becomes a frozen, slotted event handed synchronously to each registered
:class:`PolicyHook`. Metrics, logs and alerts subscribe here; the policies
themselves log only an abandoned call (a task left running, which an operator
must see even without a hook). Events are built only when at least one hook listens.

Hooks run inside the call they describe: they must be quick, must not block
and must not raise (an exception from a hook propagates to the caller like
any other bug).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from riprap._core.clock import Clock


class CircuitState(enum.StrEnum):
    """The state of a :class:`~riprap.policies.CircuitBreaker`.

    .. versionadded:: 0.1
    """

    CLOSED = "closed"
    """Calls go through; outcomes are recorded in the sliding window."""
    OPEN = "open"
    """Calls are refused until the open duration has passed."""
    HALF_OPEN = "half_open"
    """A fixed number of probe calls go through; their outcome closes or reopens it."""
    FORCED_OPEN = "forced_open"
    """Opened by hand with ``force_open()``; stays open until ``reset()``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyEvent:
    """What every policy event carries.

    Attributes:
        stage: The stage whose call it concerns (``None`` outside pipelines).
        dependency: The dependency called: the breaker's or bulkhead's name, or
            the name given to the policy stack.
        at: ``clock.monotonic()`` when the event happened.

    .. versionadded:: 0.1
    """

    stage: str | None
    dependency: str | None
    at: float


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(PolicyEvent):
    """An attempt failed with a transient error and another one will follow.

    Attributes:
        attempt: The number of the attempt that failed (1 is the first call).
        delay: Seconds the retry waits before the next attempt.
        error: The exception of the failed attempt.
        retry_after: The delay the error asked for (``Retry-After``), if any.
    """

    attempt: int
    delay: float
    error: BaseException
    retry_after: float | None


GiveUpReason = Literal["attempts", "deadline", "budget", "retry_after_exceeds_deadline"]
"""Why a retry gave up: attempts used up, the next wait would pass the deadline,
the shared retry budget is empty, or the server asked (``Retry-After``) for a
wait longer than the time left before the deadline."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUp(PolicyEvent):
    """A retryable error will not be retried; the last exception is re-raised unchanged.

    Attributes:
        attempts: How many attempts were made in total.
        reason: Why no further attempt is made.
        error: The last exception (the one re-raised).
    """

    attempts: int
    reason: GiveUpReason
    error: BaseException


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitStateChanged(PolicyEvent):
    """A circuit breaker changed state.

    Attributes:
        old: The state before.
        new: The state after.
        reason: ``"failure_rate"``, ``"slow_call_rate"``, ``"open_elapsed"``,
            ``"probes_passed"``, ``"forced_open"`` or ``"reset"``.
        failure_rate: Failure rate of the window that decided it, if evaluated.
        slow_call_rate: Slow-call rate of that window, if evaluated.
    """

    old: CircuitState
    new: CircuitState
    reason: str
    failure_rate: float | None = None
    slow_call_rate: float | None = None


RejectionReason = Literal["circuit_open", "bulkhead_full"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(PolicyEvent):
    """A call was refused before reaching the dependency.

    Attributes:
        reason: ``"circuit_open"`` or ``"bulkhead_full"``.
        error: The :class:`~riprap.policies.CircuitOpenError` or
            :class:`~riprap.policies.BulkheadFullError` raised to the caller.
    """

    reason: RejectionReason
    error: Exception


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(PolicyEvent):
    """The call failed and the fallback's degraded result was used instead.

    Attributes:
        error: The exception the fallback replaced.
    """

    error: Exception


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CallAbandoned(PolicyEvent):
    """A call ignored its timeout's cancellation past the grace period and was abandoned.

    Its caller moved on (the attempt counts as timed out and its bulkhead slot
    is free); the call's task keeps running, owned by a
    :class:`~riprap.policies.Shelter`, until it ends on its own.

    Attributes:
        kind: The timeout that sheltered it (``"attempt"``...).
        timeout: That timeout's duration in seconds.
        reason: ``"timeout"`` (it outlived its timeout by the grace period) or
            ``"cancelled"`` (its caller was cancelled, e.g. by a total timeout
            or a pipeline stop, and it did not end within the grace period).

    .. versionadded:: 0.2
    """

    kind: str
    timeout: float
    reason: Literal["timeout", "cancelled"]


class PolicyHook(Protocol):
    """Receives policy events; must be quick, non-blocking and must not raise.

    ``list.append`` is a valid hook, which is handy in tests.

    .. versionadded:: 0.1
    """

    def __call__(self, event: PolicyEvent, /) -> None: ...


@final
class Emitter:
    """Hands events to a list of hooks, with the names and clock events are stamped with.

    Adding a hook that is already registered (by equality, so the same bound
    method twice) is a no-op: a hook subscribed through several stacks that
    share a breaker still sees each event once.
    """

    __slots__ = ("clock", "dependency", "hooks", "stage")

    def __init__(
        self,
        hooks: Iterable[PolicyHook],
        *,
        clock: Clock,
        stage: str | None = None,
        dependency: str | None = None,
    ) -> None:
        self.hooks: list[PolicyHook] = []
        self.clock = clock
        self.stage = stage
        self.dependency = dependency
        for hook in hooks:
            self.add(hook)

    def add(self, hook: PolicyHook) -> None:
        """Register ``hook`` unless it is registered already."""
        if hook not in self.hooks:
            self.hooks.append(hook)

    def remove(self, hook: PolicyHook) -> None:
        """Unregister ``hook``; unknown hooks are ignored."""
        if hook in self.hooks:
            self.hooks.remove(hook)

    def emit(self, event: PolicyEvent) -> None:
        """Call every hook with ``event``, in registration order."""
        for hook in self.hooks:
            hook(event)

    def rejected(self, error: Exception, *, stage: str | None, reason: RejectionReason) -> None:
        """Tell the hooks that a call was refused with ``error`` (breaker or bulkhead)."""
        if self.hooks:
            self.emit(
                CallRejected(
                    stage=stage,
                    dependency=self.dependency,
                    at=self.clock.monotonic(),
                    reason=reason,
                    error=error,
                )
            )
