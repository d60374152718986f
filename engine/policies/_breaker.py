"""Circuit breaker: cut off a failing dependency, probe it, let it back in.

One :class:`CircuitBreaker` per dependency, shared by every stage that calls
it. Closed, it records each call's outcome in a sliding window (the last N
calls, or the last N seconds); once the window holds ``minimum_calls`` and
the failure rate or the slow-call rate reaches its threshold, it opens. Open,
it refuses calls for ``open_duration``, then turns half-open and admits
exactly ``half_open_probes`` calls, however many callers wait; when they have
all finished it closes (rates below the thresholds) or opens again.

Only errors classified ``"transient"`` are failures: a ``DataError`` is the
record's fault and counts as a call the dependency answered. Cancellation,
bugs and rejections by inner policies are not counted at all. An outcome
that arrives after the breaker changed state (a slow call admitted while it
was closed, finishing while it is half-open) is ignored.

While it is open the caller chooses: :meth:`CircuitBreaker.allow` raises
:class:`~riprap.policies.CircuitOpenError` (fail fast, fall back or dead-letter), and
:meth:`CircuitBreaker.wait_until_permitted` waits for a permit (backpressure).
Transitions happen on calls, not on timers: an open breaker turns half-open
when someone asks after ``open_duration`` has passed.

A permit is only as good as the moment it was taken, so a caller that must
queue first (for a bulkhead slot) looks with :meth:`CircuitBreaker.check` or
:meth:`CircuitBreaker.admissible` before it queues and takes its permit after
(see ``_admission``); code that queues again inside the call re-checks the
permit with ``admit_nowait()``.
"""

from __future__ import annotations

import functools
import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn, ParamSpec, TypeVar, final

import anyio

from riprap._core.clock import SYSTEM_CLOCK, monotonic_of
from riprap._core.errors import BulkheadFullError, CircuitOpenError, ConfigError

from ._classify import DEFAULT_CLASSIFIER, Classifier
from ._events import CircuitState, CircuitStateChanged, Emitter, PolicyHook
from ._marks import mark_admission
from ._scopes import check_duration, move_on_after, to_seconds
from ._windows import CountWindow, OutcomeWindow, TimeWindow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterable
    from datetime import timedelta
    from types import TracebackType

    from riprap._core.clock import Clock

P = ParamSpec("P")
"""The parameters of the wrapped call."""
T = TypeVar("T")
"""The result of the wrapped call."""

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerConfig:
    """When a :class:`CircuitBreaker` opens and how it recovers.

    Attributes:
        window: ``"count"`` (the last ``window_size`` calls) or ``"time"`` (the
            calls of the last ``window_size`` seconds).
        window_size: Calls or seconds, per ``window``.
        minimum_calls: Calls the window must hold before the rates are evaluated.
        failure_rate_threshold: Fraction of failed calls (0-1] that opens it.
        slow_call_rate_threshold: Fraction of slow calls (0-1] that opens it.
        slow_call_duration: A call that takes longer than this is slow.
        open_duration: How long it stays open before admitting probes.
        half_open_probes: How many probe calls go through while half-open.

    Raises:
        ConfigError: If a value is out of range.

    .. versionadded:: 0.1
    """

    window: Literal["count", "time"] = "count"
    window_size: float = 100
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_duration: float | timedelta = 60.0
    open_duration: float | timedelta = 60.0
    half_open_probes: int = 3

    def __post_init__(self) -> None:
        if self.window not in ("count", "time"):
            raise ConfigError("BreakerConfig.window", "must be 'count' or 'time'")
        if self.window == "count" and (self.window_size < 1 or self.window_size % 1):
            raise ConfigError("BreakerConfig.window_size", "must be a whole number of calls >= 1")
        check_duration("BreakerConfig.window_size", self.window_size)
        if self.minimum_calls < 1:
            raise ConfigError("BreakerConfig.minimum_calls", "must be >= 1")
        if self.window == "count" and self.minimum_calls > self.window_size:
            raise ConfigError(
                "BreakerConfig.minimum_calls", "exceeds window_size: the breaker could never open"
            )
        for option in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0.0 < getattr(self, option) <= 1.0:
                raise ConfigError(f"BreakerConfig.{option}", "must be in (0, 1]")
        check_duration("BreakerConfig.slow_call_duration", self.slow_call_duration)
        check_duration("BreakerConfig.open_duration", self.open_duration)
        if self.half_open_probes < 1:
            raise ConfigError("BreakerConfig.half_open_probes", "must be >= 1")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStatistics:
    """A snapshot of a breaker.

    Attributes:
        name: The breaker's name.
        state: Its current state.
        calls: Outcomes in the sliding window (closed state).
        failures: Failed calls among them.
        slow_calls: Slow calls among them.
        probes_admitted: Half-open probes admitted so far.
        rejected: Calls refused since the breaker was created.
        remaining_open: Seconds until an open breaker admits probes (0 otherwise).

    .. versionadded:: 0.1
    """

    name: str
    state: CircuitState
    calls: int
    failures: int
    slow_calls: int
    probes_admitted: int
    rejected: int
    remaining_open: float


@final
class CallPermit:
    """Permission for one call; report its outcome exactly once with :meth:`record`.

    .. versionadded:: 0.1
    """

    __slots__ = ("_breaker", "_done", "_generation", "_started", "paused", "probe", "stage", "wait")

    def __init__(
        self,
        breaker: CircuitBreaker,
        generation: int,
        started: float,
        probe: bool,
        stage: str | None,
        *,
        wait: bool = False,
    ) -> None:
        # probe and stage may come by position: a keyword call costs the hot
        # path (a permit per call) about 0.1 µs more.
        self._breaker = breaker
        self._generation = generation
        self._started = started
        self._done = False
        self.probe = probe
        self.stage = stage
        self.wait = wait  # how admit() renews it: wait for the breaker, or raise
        self.paused = 0.0  # seconds admit() waited for the breaker

    @property
    def current(self) -> bool:
        """Whether the breaker is still in the state this permit was given in."""
        return self._generation == self._breaker._generation

    def record(self, error: BaseException | None = None) -> None:
        """Report the call's outcome: ``None`` for success, else what it raised."""
        if self._done:
            return
        self._done = True
        breaker = self._breaker
        if error is None and breaker._state is _CLOSED and self._generation == breaker._generation:
            breaker._closed_outcome(self, False)  # the hot path, one call deep
        else:
            breaker._record(self, error)

    def release(self) -> None:
        """Give the permit back without an outcome (the call never happened)."""
        if not self._done:
            self._done = True
            self._breaker._outcome(self, None)


_PERMITS: ContextVar[tuple[CallPermit, ...]] = ContextVar("riprap_breaker_permits", default=())

PERMIT: ContextVar[CallPermit | None] = ContextVar("riprap_call_permit", default=None)
"""The permit of the call running in this context (what ``admit()`` re-checks)."""


@final
class CircuitBreaker:
    """A circuit breaker protecting one dependency; share it between every caller.

    Args:
        name: The dependency it protects (events and errors carry it).
        config: Thresholds, window and recovery (default :class:`BreakerConfig`).
        classifier: Decides which errors are failures.
        clock: Monotonic time for windows, slow calls and the open duration.
        hooks: Receive :class:`~riprap.policies.CircuitStateChanged` and
            :class:`~riprap.policies.CallRejected` events.

    Use as a decorator (``@breaker``), with ``wrap(fn, wait=True)``, as
    ``async with breaker:`` (fail fast), or by hand with :meth:`allow` or
    :meth:`wait_until_permitted` and :meth:`CallPermit.record`.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_changed",
        "_classifier",
        "_clock",
        "_emitter",
        "_evaluate_every_call",
        "_generation",
        "_now",
        "_open_duration",
        "_opened_at",
        "_probe_calls",
        "_probe_failures",
        "_probe_slow",
        "_probes_admitted",
        "_rejected",
        "_slow_duration",
        "_state",
        "_window",
        "config",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        classifier: Classifier | None = None,
        clock: Clock | None = None,
        hooks: Iterable[PolicyHook] = (),
    ) -> None:
        self.name = name
        self.config = config = config or BreakerConfig()
        self._classifier = classifier or DEFAULT_CLASSIFIER
        self._clock = clock or SYSTEM_CLOCK
        self._now = monotonic_of(self._clock)
        self._emitter = Emitter(hooks, clock=self._clock, dependency=name)
        self._slow_duration = to_seconds(config.slow_call_duration)
        self._open_duration = to_seconds(config.open_duration)
        self._window: OutcomeWindow = (
            CountWindow(int(config.window_size))
            if config.window == "count"
            else TimeWindow(config.window_size)
        )
        self._evaluate_every_call = config.window == "time"
        self._state = _CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._probes_admitted = self._probe_calls = self._probe_failures = self._probe_slow = 0
        self._rejected = 0
        # Created on first wait: an anyio.Event needs a running event loop.
        self._changed: anyio.Event | None = None

    # -- state ---------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The clock the breaker measures time with."""
        return self._clock

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose open duration passed reads half-open)."""
        return self._current(self._clock.monotonic(), None)

    def _current(self, now: float, stage: str | None) -> CircuitState:
        if self._state is _OPEN and now >= self._opened_at + self._open_duration:
            self._transition(_HALF_OPEN, "open_elapsed", stage)
        return self._state

    def _remaining(self, now: float) -> float:
        if self._state is _FORCED_OPEN:
            return math.inf
        if self._state is _OPEN:
            return max(0.0, self._opened_at + self._open_duration - now)
        return 0.0

    def _transition(
        self,
        new: CircuitState,
        reason: str,
        stage: str | None,
        rates: tuple[float, float] | None = None,
    ) -> None:
        old = self._state
        now = self._clock.monotonic()
        self._state = new
        self._generation += 1  # outcomes of calls admitted before are stale now
        if new is _OPEN:
            self._opened_at = now
        self._probes_admitted = self._probe_calls = self._probe_failures = self._probe_slow = 0
        if new is _CLOSED:
            self._window.clear()
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if self._emitter.hooks and old is not new:
            self._emitter.emit(
                CircuitStateChanged(
                    stage=stage,
                    dependency=self.name,
                    at=now,
                    old=old,
                    new=new,
                    reason=reason,
                    failure_rate=rates[0] if rates else None,
                    slow_call_rate=rates[1] if rates else None,
                )
            )

    def force_open(self) -> None:
        """Open the breaker until :meth:`reset`, whatever the calls do."""
        self._transition(_FORCED_OPEN, "forced_open", None)

    def reset(self) -> None:
        """Close the breaker and forget every recorded outcome."""
        self._transition(_CLOSED, "reset", None)

    # -- permits -------------------------------------------------------------

    def _try_acquire(self, stage: str | None) -> CallPermit | None:
        now = self._clock.monotonic()
        state = self._current(now, stage)
        if state is _CLOSED:
            return CallPermit(self, self._generation, now, False, stage)
        if state is _HALF_OPEN and self._probes_admitted < self.config.half_open_probes:
            self._probes_admitted += 1
            return CallPermit(self, self._generation, now, True, stage)
        return None

    def admissible(self, *, stage: str | None = None) -> bool:
        """Whether a call asking now would get a permit (nothing is taken).

        Args:
            stage: The stage name a state change seen now is reported with.

        .. versionadded:: 0.2
        """
        state = self._current(self._clock.monotonic(), stage)
        return state is _CLOSED or (
            state is _HALF_OPEN and self._probes_admitted < self.config.half_open_probes
        )

    def check(self, *, stage: str | None = None) -> None:
        """Refuse now if a call asking now would be refused; take nothing otherwise.

        A look before queueing (for a bulkhead slot, say), so that an open
        breaker does not make callers queue for nothing; the permit is taken
        with :meth:`allow` after the queue.

        Raises:
            CircuitOpenError: If the breaker would refuse a call now.

        .. versionadded:: 0.2
        """
        if self._state is not _CLOSED and not self.admissible(stage=stage):
            self._refuse(stage)

    def try_allow(self, *, stage: str | None = None) -> CallPermit | None:
        """A permit for one call, or ``None`` (nothing counted) when the breaker refuses now.

        .. versionadded:: 0.2
        """
        if self._state is _CLOSED:  # the hot path, as in allow()
            return CallPermit(self, self._generation, self._clock.monotonic(), False, stage)
        return self._try_acquire(stage)

    def _refuse(self, stage: str | None) -> NoReturn:
        self._rejected += 1
        error = CircuitOpenError(self.name, remaining=self._remaining(self._clock.monotonic()))
        self._emitter.rejected(error, stage=stage, reason="circuit_open")
        raise error

    def allow(self, *, stage: str | None = None) -> CallPermit:
        """A permit for one call, or an error when the breaker refuses it now.

        Raises:
            CircuitOpenError: If the breaker is open, forced open, or half-open
                with every probe taken.
        """
        if self._state is _CLOSED:  # the hot path
            return CallPermit(self, self._generation, self._clock.monotonic(), False, stage)
        permit = self._try_acquire(stage)
        if permit is not None:
            return permit
        self._refuse(stage)

    async def wait_until_permitted(self, *, stage: str | None = None) -> CallPermit:
        """Wait until the breaker admits a call, and return its permit.

        Waits out the open duration, then competes for a half-open probe; if the
        probes reopen the breaker it waits again. Cancellable at any point
        without taking a permit. Returns at once (no checkpoint) when closed.
        """
        while True:
            permit = self._try_acquire(stage)
            if permit is not None:
                return permit
            await self._wait_change()

    async def wait_until_admissible(self, *, stage: str | None = None) -> None:
        """Wait until a call asking would get a permit; take none.

        Returns at once (no checkpoint) when it would already. A caller that
        queues for something else before it asks uses this to wait without
        holding its place there.

        .. versionadded:: 0.2
        """
        while not self.admissible(stage=stage):
            await self._wait_change()

    async def _wait_change(self) -> None:
        """Wait for a state change, or for the open duration to pass."""
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        if self._state is _OPEN:
            remaining = self._remaining(self._clock.monotonic())
            async with move_on_after(remaining, clock=self._clock):
                await changed.wait()
        else:
            await changed.wait()

    async def _renew(self, permit: CallPermit) -> None:
        """Give ``permit``, stale since a state change, the breaker's answer of now.

        Raises:
            CircuitOpenError: If the breaker refuses now and ``permit.wait`` is false.
        """
        if not permit.wait:
            self._renew_nowait(permit)
            return
        began = self._clock.monotonic()
        fresh = await self.wait_until_permitted(stage=permit.stage)
        permit.paused += fresh._started - began
        _take(permit, fresh)

    def _renew_nowait(self, permit: CallPermit) -> None:
        """:meth:`_renew` without waiting.

        Raises:
            CircuitOpenError: If the breaker refuses now and ``permit.wait`` is false.
            anyio.WouldBlock: If it refuses now and ``permit.wait`` is true.
        """
        if not permit.wait:
            _take(permit, self.allow(stage=permit.stage))
            return
        fresh = self._try_acquire(permit.stage)
        if fresh is None:
            raise anyio.WouldBlock
        _take(permit, fresh)

    # -- outcomes ------------------------------------------------------------

    def _record(self, permit: CallPermit, error: BaseException | None) -> None:
        if error is None:
            self._outcome(permit, False)
        elif not isinstance(error, Exception) or isinstance(
            error, CircuitOpenError | BulkheadFullError
        ):
            self._outcome(permit, None)  # cancellation or a local rejection
        else:
            verdict = self._classifier.classify(error)
            self._outcome(permit, None if verdict == "bug" else verdict == "transient")

    def _outcome(self, permit: CallPermit, failed: bool | None) -> None:
        """Count one outcome; ``failed=None`` returns the permit uncounted."""
        if permit._generation != self._generation:
            return
        if self._state is _CLOSED:
            if failed is not None:
                self._closed_outcome(permit, failed)
        elif self._state is _HALF_OPEN and permit.probe:
            if failed is None:
                self._probes_admitted -= 1  # let another probe through
                if self._changed is not None:
                    self._changed.set()
                    self._changed = None
            else:
                self._record_probe(permit, failed)

    def _closed_outcome(self, permit: CallPermit, failed: bool) -> None:
        """Count an outcome of a call admitted in the current closed state."""
        now = self._now()
        slow = now - permit._started > self._slow_duration
        window = self._window
        window.add(now, failed, slow)
        # In a count window a fast success cannot raise either rate, so once the
        # window holds enough calls only failures and slow calls need a look. In
        # a time window it can (older successes expire): always evaluate there.
        if failed or slow or self._evaluate_every_call or window.calls <= self.config.minimum_calls:
            self._evaluate_closed(now, permit.stage)

    def succeeded(self, permit: CallPermit) -> None:
        """``permit.record(None)`` in one frame: the fused stack's happy path.

        A full count window whose oldest call was a plain success, taking a
        fast success, only moves its position on: its totals stay as they were,
        and every change of them that could raise a rate was evaluated when it
        came. Anything else takes the general path.
        """
        if permit._done:
            return
        permit._done = True
        if self._state is not _CLOSED or permit._generation != self._generation:
            self._record(permit, None)
            return
        now = self._now()
        window = self._window
        if type(window) is CountWindow and now - permit._started <= self._slow_duration:
            ring, pos = window._ring, window._pos
            size = len(ring)
            if window.calls == size and not ring[pos]:
                pos += 1
                window._pos = 0 if pos == size else pos
                return
        self._closed_outcome(permit, False)

    def _evaluate_closed(self, now: float, stage: str | None) -> None:
        calls, failures, slow = self._window.totals(now)
        if calls >= self.config.minimum_calls:
            self._decide(calls, failures, slow, stage, close=False)

    def _record_probe(self, permit: CallPermit, failed: bool) -> None:
        self._probe_calls += 1
        self._probe_failures += failed
        self._probe_slow += self._clock.monotonic() - permit._started > self._slow_duration
        if self._probe_calls >= self.config.half_open_probes:
            self._decide(
                self._probe_calls, self._probe_failures, self._probe_slow, permit.stage, close=True
            )

    def _decide(
        self, calls: int, failures: int, slow: int, stage: str | None, *, close: bool
    ) -> None:
        rates = (failures / calls, slow / calls)
        if rates[0] >= self.config.failure_rate_threshold:
            self._transition(_OPEN, "failure_rate", stage, rates)
        elif rates[1] >= self.config.slow_call_rate_threshold:
            self._transition(_OPEN, "slow_call_rate", stage, rates)
        elif close:
            self._transition(_CLOSED, "probes_passed", stage, rates)

    # -- hooks and statistics ------------------------------------------------

    def add_hook(self, hook: PolicyHook) -> None:
        """Send this breaker's events to ``hook`` too (no-op if already registered)."""
        self._emitter.add(hook)

    def remove_hook(self, hook: PolicyHook) -> None:
        """Stop sending events to ``hook``."""
        self._emitter.remove(hook)

    def statistics(self) -> BreakerStatistics:
        """A snapshot of the breaker's state and window."""
        now = self._clock.monotonic()
        state = self._current(now, None)
        calls, failures, slow = self._window.totals(now) if state is _CLOSED else (0, 0, 0)
        return BreakerStatistics(
            name=self.name,
            state=state,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            probes_admitted=self._probes_admitted,
            rejected=self._rejected,
            remaining_open=self._remaining(now),
        )

    # -- wrappers ------------------------------------------------------------

    def wrap(
        self, fn: Callable[P, Awaitable[T]], /, *, wait: bool = False, stage: str | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        """``fn`` guarded by this breaker.

        Args:
            fn: The async callable to protect.
            wait: Wait for a permit while the breaker is open instead of raising.
            stage: The stage name events carry.
        """
        return guarded(fn, self, wait=wait, stage=stage)

    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorator form of :meth:`wrap` (fail fast)."""
        return self.wrap(fn)

    async def __aenter__(self) -> CallPermit:
        permit = self.allow()
        _PERMITS.set((*_PERMITS.get(), permit))
        return permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permits = _PERMITS.get()
        for i in range(len(permits) - 1, -1, -1):
            if permits[i]._breaker is self:
                _PERMITS.set(permits[:i] + permits[i + 1 :])
                permits[i].record(exc)
                return
        raise RuntimeError(f"breaker {self.name!r} exited in a task that did not enter it")

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"


def _take(permit: CallPermit, fresh: CallPermit) -> None:
    """Make ``permit`` the ``fresh`` one (its outcome is then recorded against the new state)."""
    permit._generation, permit._started, permit.probe = (
        fresh._generation,
        fresh._started,
        fresh.probe,
    )


def guarded(
    fn: Callable[P, Awaitable[T]], breaker: CircuitBreaker, *, wait: bool, stage: str | None
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``fn`` behind ``breaker`` alone: take a permit, call, record the outcome."""

    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        waited = 0.0
        if wait and breaker._state is not _CLOSED:
            clock = breaker.clock
            began = clock.monotonic()
            permit = await breaker.wait_until_permitted(stage=stage)
            waited = clock.monotonic() - began
        else:
            permit = breaker.allow(stage=stage)
        if wait:
            permit.wait = True
        token = PERMIT.set(permit)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            failed(permit, exc, waited)
            raise
        finally:
            PERMIT.reset(token)
        permit.record(None)
        return result

    return functools.wraps(fn)(call)


def failed(permit: CallPermit, exc: BaseException, waited: float) -> None:
    """Record a call's failure; mark on ``exc`` what the outage cost it (see ``_marks``).

    ``waited``: seconds the call waited for the breaker before it got ``permit``.
    """
    permit.record(exc)
    if isinstance(exc, Exception) and permit.wait and (permit.probe or permit.paused or waited):
        # Kept off the record's attempts and retry deadline.
        paused = waited + permit.paused
        if permit.probe:
            paused += permit._breaker.clock.monotonic() - permit._started
        mark_admission(exc, probe=permit.probe, paused=paused)
