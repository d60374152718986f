"""In-process alert rules: evaluated on the run's statistics, delivered once per incident.

A rule watches one signal (error rate, dead letters, lag growth, breaker open
time, checkpoint age, restarts) over a window. It fires when the signal stays
above its threshold for ``for_seconds`` and resolves when it drops back: one
incident makes one ``firing`` and one ``resolved`` alert, whatever the
evaluation interval. Delivery failures are logged, never allowed to stop the
pipeline.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, final, runtime_checkable

import orjson

from riprap._core.errors import ConfigError, TransientError
from riprap.policies import Policies, PolicyStack, Retry

if TYPE_CHECKING:
    from riprap._core.clock import Clock
    from riprap.observability._statistics import RunStatistics

log = logging.getLogger("riprap.alerts")

Signal = Literal[
    "error_rate", "dead_letters", "lag_growth", "breaker_open", "checkpoint_age", "restarts"
]
"""What a rule watches: see :class:`AlertRule`."""

_SIGNALS: tuple[str, ...] = Signal.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRule:
    """One alert condition.

    Signals: ``error_rate`` (dead-lettered share of the records finished in
    the window), ``dead_letters`` (dead letters in the window), ``lag_growth``
    (growth of the source lag over the window), ``breaker_open`` (seconds the
    longest-open breaker has been open), ``checkpoint_age`` (seconds since the
    last checkpoint), ``restarts`` (restarts seen in the window: this run's own
    start when it is not the pipeline's first and lies in the window, and every
    rise of the checkpoint epoch seen since; starts of earlier processes are
    for the Prometheus rule on ``riprap_starts``, which keeps their history).

    Attributes:
        name: Names the alert.
        signal: What to watch.
        threshold: The alert fires while the signal is above this.
        window: Seconds over which rates and growth are measured.
        for_seconds: How long the signal must stay above before it fires, and
            below before it resolves (so a signal near the threshold does not flap).
    """

    name: str
    signal: Signal
    threshold: float
    window: float = 300.0
    for_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.signal not in _SIGNALS:
            raise ConfigError(
                f"AlertRule({self.name!r}).signal", f"must be one of {', '.join(_SIGNALS)}"
            )
        if self.window <= 0:
            raise ConfigError(f"AlertRule({self.name!r}).window", "must be > 0 seconds")
        if self.for_seconds < 0:
            raise ConfigError(f"AlertRule({self.name!r}).for_seconds", "must be >= 0 seconds")


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule changed state: ``firing`` or ``resolved``."""

    rule: str
    status: Literal["firing", "resolved"]
    pipeline: str
    signal: str
    value: float
    threshold: float
    at: float

    def to_json(self) -> bytes:
        """The alert as JSON (the webhook body)."""
        return orjson.dumps(
            {
                "rule": self.rule,
                "status": self.status,
                "pipeline": self.pipeline,
                "signal": self.signal,
                "value": self.value,
                "threshold": self.threshold,
                "at": self.at,
            }
        )


@runtime_checkable
class AlertSink(Protocol):
    """Delivers alerts (the log, a webhook, a callback)."""

    async def deliver(self, alert: Alert) -> None: ...


@final
class LogAlerts:
    """Writes alerts to the ``riprap.alerts`` logger (the default)."""

    async def deliver(self, alert: Alert) -> None:
        level = logging.WARNING if alert.status == "firing" else logging.INFO
        log.log(
            level,
            "alert %s %s: %s = %.3g (threshold %.3g)",
            alert.rule,
            alert.status,
            alert.signal,
            alert.value,
            alert.threshold,
            extra={"pipeline": alert.pipeline},
        )


@final
class CallbackAlerts:
    """Calls ``fn(alert)`` (sync or async) for every alert."""

    def __init__(self, fn: Callable[[Alert], object]) -> None:
        self.fn = fn

    async def deliver(self, alert: Alert) -> None:
        result = self.fn(alert)
        if isinstance(result, Awaitable):
            await result


@final
class WebhookAlerts:
    """POSTs each alert as JSON to ``url``, with its own timeout and retries.

    Args:
        url: Where to POST.
        timeout: Seconds per attempt.
        retry: Retries of a failed delivery (default: 3 attempts).
    """

    def __init__(self, url: str, *, timeout: float = 5.0, retry: Retry | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self._stack = PolicyStack(
            Policies(
                retry=retry or Retry(attempts=3, timeout=60.0, wait_initial=0.5),
                attempt_timeout=timeout,
            ),
            stage="alerts",
            dependency=url,
        )

    async def deliver(self, alert: Alert) -> None:
        await self._stack.wrap(self._post)(alert.to_json())

    async def _post(self, body: bytes) -> None:
        import aiohttp  # here: importing riprap should not cost aiohttp's import (0.14 s)

        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.url, data=body, headers={"Content-Type": "application/json"}
            ) as response,
        ):
            if response.status >= 500 or response.status in (408, 429):
                raise TransientError(f"webhook answered {response.status}")
            response.raise_for_status()


@final
class _RuleState:
    __slots__ = ("breach_since", "clear_since", "firing")

    def __init__(self) -> None:
        self.breach_since: float | None = None
        self.clear_since: float | None = None
        self.firing = False


@final
class AlertEvaluator:
    """Evaluates rules on a run's statistics every ``interval`` seconds of its clock.

    Args:
        pipeline: The pipeline's name, carried by every alert.
        statistics: Returns the run's current :class:`~riprap.RunStatistics`.
        rules: The rules to evaluate.
        sinks: Where state changes are delivered.
        interval: Seconds between evaluations.
        clock: The pipeline's clock.
    """

    def __init__(
        self,
        pipeline: str,
        statistics: Callable[[], RunStatistics],
        rules: Sequence[AlertRule],
        sinks: Sequence[AlertSink],
        *,
        interval: float,
        clock: Clock,
    ) -> None:
        self.pipeline = pipeline
        self.statistics = statistics
        self.rules = tuple(rules)
        self.sinks = tuple(sinks)
        self.interval = interval
        self.clock = clock
        self.delivered: list[Alert] = []
        self._states = {rule.name: _RuleState() for rule in rules}
        self._samples: deque[tuple[float, int, int, int]] = deque()
        self._window = max((rule.window for rule in rules), default=0.0)
        self._restarts: deque[float] = deque()  # when each restart seen happened
        self._epoch: int | None = None

    async def run_periodic(self) -> None:
        """Evaluate until cancelled."""
        while True:
            await self.clock.sleep(self.interval)
            await self.evaluate()

    async def evaluate(self) -> None:
        """Sample the run once, update every rule, deliver state changes."""
        now = self.clock.monotonic()
        stats = self.statistics()
        self._sample(stats, now)
        for rule in self.rules:
            value = self._signal(rule, stats, now)
            alert = self._transition(rule, value, now)
            if alert is not None:
                await self._deliver(alert)

    def _sample(self, stats: RunStatistics, now: float) -> None:
        finished = stats.records_out + stats.dropped + stats.dead_lettered
        self._samples.append((now, finished, stats.dead_lettered, stats.lag or 0))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        self._sample_restarts(stats.checkpoint.epoch, now - stats.elapsed, now)

    def _sample_restarts(self, epoch: int, started: float, now: float) -> None:
        """Note restarts: the run's own (at its start) if not the first, then each epoch rise."""
        if self._epoch is None:
            if epoch > 1:
                self._restarts.append(started)
        elif epoch > self._epoch:
            self._restarts.extend([now] * (epoch - self._epoch))
        self._epoch = epoch if self._epoch is None else max(self._epoch, epoch)
        while self._restarts and now - self._restarts[0] > self._window:
            self._restarts.popleft()

    def _delta(self, rule: AlertRule, now: float) -> tuple[int, int, int]:
        current = self._samples[-1]
        start = current
        for sample in self._samples:
            if now - sample[0] <= rule.window:
                start = sample
                break
        return current[1] - start[1], current[2] - start[2], current[3] - start[3]

    def _signal(self, rule: AlertRule, stats: RunStatistics, now: float) -> float:
        records, dead, lag = self._delta(rule, now)
        if rule.signal == "error_rate":
            return dead / records if records else 0.0
        if rule.signal == "dead_letters":
            return float(dead)
        if rule.signal == "lag_growth":
            return float(lag)
        if rule.signal == "breaker_open":
            opened = stats.policies.open_since.values()
            return max((now - since for since in opened), default=0.0)
        if rule.signal == "checkpoint_age":
            return stats.checkpoint.age or 0.0
        return float(sum(1 for at in self._restarts if now - at <= rule.window))

    def _transition(self, rule: AlertRule, value: float, now: float) -> Alert | None:
        state = self._states[rule.name]
        if value > rule.threshold:
            state.clear_since = None
            if state.breach_since is None:
                state.breach_since = now
            if not state.firing and now - state.breach_since >= rule.for_seconds:
                state.firing = True
                return self._alert(rule, "firing", value, now)
            return None
        state.breach_since = None
        if state.clear_since is None:
            state.clear_since = now
        if state.firing and now - state.clear_since >= rule.for_seconds:
            state.firing = False
            return self._alert(rule, "resolved", value, now)
        return None

    def _alert(
        self, rule: AlertRule, status: Literal["firing", "resolved"], value: float, now: float
    ) -> Alert:
        return Alert(
            rule=rule.name,
            status=status,
            pipeline=self.pipeline,
            signal=rule.signal,
            value=value,
            threshold=rule.threshold,
            at=self.clock.time(),
        )

    async def _deliver(self, alert: Alert) -> None:
        self.delivered.append(alert)
        for sink in self.sinks:
            try:
                await sink.deliver(alert)
            except Exception as error:
                log.error(
                    "alert %s (%s) could not be delivered by %s: %s: %s",
                    alert.rule,
                    alert.status,
                    type(sink).__name__,
                    type(error).__name__,
                    error,
                )
