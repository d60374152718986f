"""The pipeline definition: an immutable description that runs nothing.

Every builder method returns a new :class:`Pipeline`; only :meth:`Pipeline.run`
or :meth:`Pipeline.open` start tasks. Options and steps are checked as they
are added and the whole pipeline again before it runs, so a mistake is a
:class:`~riprap.ConfigError` naming the option, never a surprise mid-run.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack, final

from ._alerts import AlertRule, AlertSink, LogAlerts
from ._checkpoint import CheckpointBackend
from ._clock import SYSTEM_CLOCK, Clock
from ._dlq_sinks import DeadLetterSink
from ._errors import ConfigError
from ._protocols import Sink, Source, Stage
from ._redact import Redactor
from ._routing import DeadLetterGuard
from ._tracing import otel_available
from .policies import Bulkhead, CircuitBreaker, Policies, PolicyHook, Retry

DEFAULT_SINK_RETRY = Retry(attempts=5, timeout=120.0, wait_initial=0.2, wait_max=10.0)
"""Retries of a failed sink write unless the pipeline says otherwise."""

DEFAULT_SINK_ATTEMPT_TIMEOUT = 60.0
"""Seconds one sink write may take unless the pipeline says otherwise."""

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from contextlib import AbstractAsyncContextManager

    from typing_extensions import Unpack

    from ._report import RunReport
    from ._runtime import RunningPipeline

OnError = Literal["dlq", "stop"]
"""What a step does with a record that raised a ``DataError``: dead-letter it, or stop."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineOptions:
    """How a pipeline runs; every field is a keyword of :class:`Pipeline`.

    Attributes:
        checkpoint: Where checkpoints go; ``None`` means SQLite at ``checkpoint_path``.
        checkpoint_path: File of the default SQLite checkpoint store.
        checkpoint_interval: Seconds between periodic checkpoints.
        max_in_flight: Records read from the source and not yet done (I9).
        batch_size: Most records the source hands over at once.
        queue_size: Batches buffered between two stages.
        drain_timeout: Seconds a graceful stop waits for in-flight records.
        owner: Identity written with checkpoints (fencing); defaults to host:pid:random.
        clock: Time source for the checkpoint interval (tests pass a virtual clock).
        dead_letter: Where failed records go; without one, a failing record stops the run.
        redactor: Cleans error messages and tracebacks in dead letters and logs.
        max_crashes: A record that stopped the run this many times is dead-lettered
            (reason ``crash_loop``) on the next start instead of processed.
        dlq_guard: Stops (or pauses) the run when dead-lettering looks systematic;
            ``None`` turns the guard off.
        policy_hooks: Receive every retry, give-up, breaker change, rejection and
            fallback of every step (metrics and alerts plug in here).
        alerts: Alert rules evaluated in-process every ``alert_interval`` seconds.
        alert_sinks: Where alerts go (default: the log).
        alert_interval: Seconds between alert evaluations.
        tracing: ``True`` (the global OpenTelemetry tracer provider) or a
            ``TracerProvider``: one span per batch per stage (needs the ``otel`` extra).
    """

    checkpoint: CheckpointBackend | None = None
    checkpoint_path: str = ".riprap/checkpoints.db"
    checkpoint_interval: float = 5.0
    max_in_flight: int = 10_000
    batch_size: int = 1_000
    queue_size: int = 4
    drain_timeout: float = 30.0
    owner: str | None = None
    clock: Clock = SYSTEM_CLOCK
    dead_letter: DeadLetterSink | None = None
    redactor: Redactor = field(default_factory=Redactor)
    max_crashes: int = 3
    dlq_guard: DeadLetterGuard | None = field(default_factory=DeadLetterGuard)
    policy_hooks: tuple[PolicyHook, ...] = ()
    alerts: tuple[AlertRule, ...] = ()
    alert_sinks: tuple[AlertSink, ...] = field(default_factory=lambda: (LogAlerts(),))
    alert_interval: float = 10.0
    tracing: Any = False

    def check(self) -> None:
        """Raise :class:`ConfigError` for the first impossible value."""
        _positive_int("batch_size", self.batch_size)
        _positive_int("max_in_flight", self.max_in_flight)
        _positive_int("queue_size", self.queue_size)
        if self.max_in_flight < self.batch_size:
            raise ConfigError(
                "max_in_flight",
                f"must be at least batch_size ({self.batch_size}), got {self.max_in_flight}",
            )
        _positive_number("checkpoint_interval", self.checkpoint_interval)
        if not _is_number(self.drain_timeout) or self.drain_timeout < 0:
            raise ConfigError("drain_timeout", f"must be >= 0 seconds, got {self.drain_timeout!r}")
        if self.checkpoint is not None and not isinstance(self.checkpoint, CheckpointBackend):
            raise ConfigError(
                "checkpoint",
                f"{self.checkpoint!r} does not implement CheckpointBackend "
                "(claim, save, load, aclose)",
            )
        if self.checkpoint is None and not self.checkpoint_path:
            raise ConfigError("checkpoint_path", "must be a file path when no checkpoint is given")
        if not isinstance(self.clock, Clock):
            raise ConfigError("clock", f"{self.clock!r} does not implement Clock")
        if self.dead_letter is not None and not isinstance(self.dead_letter, DeadLetterSink):
            raise ConfigError(
                "dead_letter",
                f"{self.dead_letter!r} does not implement DeadLetterSink "
                "(name, open, write, aclose)",
            )
        if not isinstance(self.redactor, Redactor):
            raise ConfigError("redactor", f"must be a riprap.Redactor, got {self.redactor!r}")
        _positive_int("max_crashes", self.max_crashes)
        _positive_number("alert_interval", self.alert_interval)
        if self.tracing and not otel_available():
            raise ConfigError("tracing", "needs opentelemetry-api: pip install 'riprap[otel]'")
        for rule in self.alerts:
            if not isinstance(rule, AlertRule):
                raise ConfigError("alerts", f"must hold riprap.AlertRule objects, got {rule!r}")
        for sink in self.alert_sinks:
            if not isinstance(sink, AlertSink):
                raise ConfigError("alert_sinks", f"{sink!r} does not implement AlertSink (deliver)")
        if self.dlq_guard is not None:
            if not isinstance(self.dlq_guard, DeadLetterGuard):
                raise ConfigError(
                    "dlq_guard", f"must be a riprap.DeadLetterGuard or None, got {self.dlq_guard!r}"
                )
            self.dlq_guard.check()


_OPTION_NAMES = tuple(f.name for f in fields(PipelineOptions))


class StepOptions(TypedDict, total=False):
    """Keyword options of the map, filter and flat_map steps of a :class:`Pipeline`.

    Attributes:
        concurrency: Calls of an async function running at once (default 1).
        ordered: Keep input order in the output (default) or emit as completed.
        record: Pass whole :class:`~riprap.Record` objects instead of plain values.
        key: Process records of one key one at a time, in order, while different
            keys run concurrently (up to ``concurrency``).
        on_error: ``"dlq"`` (default) dead-letters records that raise a
            ``DataError`` when the pipeline has a dead-letter sink; ``"stop"``
            stops the run instead.
        retry: Retry transient failures (:class:`~riprap.policies.Retry`).
        timeout: Seconds for the whole call, retries included.
        attempt_timeout: Seconds for one attempt (a timed-out attempt is retried).
        breaker: The dependency's shared :class:`~riprap.policies.CircuitBreaker`.
        on_open: While the breaker is open, ``"wait"`` (backpressure, the
            default) or ``"raise"`` (the record fails with ``CircuitOpenError``).
        bulkhead: A :class:`~riprap.policies.Bulkhead` limiting concurrent calls.
        fallback: ``fallback(error, value)`` (sync or async) gives a degraded
            result when the call fails for good; counted as a fallback.
    """

    concurrency: int
    ordered: bool
    record: bool
    key: Callable[[Any], Any] | None
    on_error: OnError
    retry: Retry | None
    timeout: float | None
    attempt_timeout: float | None
    breaker: CircuitBreaker | None
    on_open: Literal["wait", "raise"]
    bulkhead: Bulkhead | None
    fallback: Callable[..., Any] | None


_STEP_OPTIONS = tuple(StepOptions.__annotations__)


@dataclass(frozen=True, slots=True)
class OpStep:
    """A map, filter or flat_map step."""

    kind: Literal["map", "filter", "flat_map"]
    step_id: str
    fn: Callable[..., Any]
    is_async: bool
    concurrency: int = 1
    ordered: bool = True
    record: bool = False
    on_error: OnError = "dlq"
    policies: Policies | None = None
    fallback: Callable[..., Any] | None = None
    key: Callable[[Any], Any] | None = None

    @property
    def fusable(self) -> bool:
        """Whether this step can run inside a fused sync loop."""
        return (
            not self.is_async
            and not self.record
            and self.concurrency == 1
            and self.policies is None
            and self.fallback is None
            and self.key is None
        )


@dataclass(frozen=True, slots=True)
class BatchStep:
    """Groups values into lists of ``size`` (the last one may be shorter)."""

    step_id: str
    size: int
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class StageStep:
    """A user-supplied :class:`~riprap.Stage`."""

    stage: Stage

    @property
    def step_id(self) -> str:
        return self.stage.step_id


Step = OpStep | BatchStep | StageStep


@final
@dataclass(frozen=True, slots=True)
class Pipeline:
    """A source, steps and a sink, plus the options they run with.

    Build it with chained calls; each returns a new pipeline::

        pipeline = (
            Pipeline("orders", checkpoint_interval=2.0)
            .source(JsonLinesSource("orders.jsonl"))
            .map("parse", orjson.loads)
            .filter("paid", lambda order: order["paid"])
            .sink(SqliteSink("orders.db", table="orders", key="id"))
        )

    Args:
        name: Names the pipeline in checkpoints, metrics and logs.
        **options: Any field of :class:`PipelineOptions`.

    Raises:
        ConfigError: For an unknown option (with a suggestion) or a bad value.
    """

    name: str
    options: PipelineOptions
    steps: tuple[Step, ...]
    source_: Source | None
    sink_: Sink | None
    sink_policies: Policies | None

    def __init__(self, name: str, **options: Any) -> None:
        for key in options:
            if key not in _OPTION_NAMES:
                close = difflib.get_close_matches(key, _OPTION_NAMES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(key, f"unknown pipeline option{hint}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                "name",
                f"must start with a letter or digit and hold only letters, digits, "
                f"'_', '.', '-'; got {name!r}",
            )
        opts = PipelineOptions(**options)
        opts.check()
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "steps", ())
        object.__setattr__(self, "source_", None)
        object.__setattr__(self, "sink_", None)
        object.__setattr__(self, "sink_policies", None)

    def _with(self, **changes: Any) -> Pipeline:
        new = object.__new__(Pipeline)
        for f in fields(self):
            object.__setattr__(new, f.name, changes.get(f.name, getattr(self, f.name)))
        return new

    def with_options(self, **options: Any) -> Pipeline:
        """A copy with some options changed (same checks as the constructor)."""
        probe = Pipeline(self.name, **options)
        return self._with(options=replace(self.options, **_given(probe.options, options)))

    def renamed(self, name: str) -> Pipeline:
        """A copy under another name (checkpoints are kept per name)."""
        Pipeline(name)  # checks the name
        return self._with(name=name)

    def source(self, source: Source) -> Pipeline:
        """Set where records come from."""
        if not isinstance(source, Source):
            raise ConfigError(
                "source", f"{source!r} does not implement Source (name, open, read, aclose)"
            )
        return self._with(source_=source)

    def sink(
        self,
        sink: Sink,
        *,
        retry: Retry | None = DEFAULT_SINK_RETRY,
        timeout: float | None = None,
        attempt_timeout: float | None = DEFAULT_SINK_ATTEMPT_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        bulkhead: Bulkhead | None = None,
    ) -> Pipeline:
        """Set where records go, and the policies around its writes.

        By default a write that fails transiently is retried
        (:data:`DEFAULT_SINK_RETRY`) and each attempt has a timeout; when the
        sink stays down the run stops without loss (the checkpoint does not
        pass unwritten records). A breaker on the sink always waits while open.
        """
        if not isinstance(sink, Sink):
            raise ConfigError(
                "sink",
                f"{sink!r} does not implement Sink (name, idempotent, open, write, flush, aclose)",
            )
        policies = _policies("sink", retry, timeout, attempt_timeout, breaker, "wait", bulkhead)
        return self._with(sink_=sink, sink_policies=policies)

    def map(self, step_id: str, fn: Callable[..., Any], **options: Unpack[StepOptions]) -> Pipeline:
        """Replace each value with ``fn(value)``; ``fn`` may be sync or async.

        Args:
            step_id: Names the step in logs, metrics and checkpoints.
            fn: The function; with ``record=True`` it receives a :class:`~riprap.Record`.
            **options: See :class:`StepOptions` (concurrency, ordering, keys, error
                routing and resilience policies).
        """
        return self._add_op("map", step_id, fn, options)

    def filter(
        self, step_id: str, fn: Callable[..., Any], **options: Unpack[StepOptions]
    ) -> Pipeline:
        """Keep values for which ``fn(value)`` is truthy; dropped records count as done."""
        return self._add_op("filter", step_id, fn, options)

    def flat_map(
        self, step_id: str, fn: Callable[..., Any], **options: Unpack[StepOptions]
    ) -> Pipeline:
        """Replace each value with every item of the iterable ``fn(value)`` returns."""
        return self._add_op("flat_map", step_id, fn, options)

    def batch(self, step_id: str, size: int, *, timeout: float | None = None) -> Pipeline:
        """Group values into lists of ``size``; a partial list goes out after ``timeout`` s."""
        self._check_step_id(step_id)
        _positive_int(f"batch({step_id!r}).size", size)
        if timeout is not None:
            _positive_number(f"batch({step_id!r}).timeout", timeout)
        return self._with(steps=(*self.steps, BatchStep(step_id, size, timeout)))

    def stage(self, stage: Stage) -> Pipeline:
        """Add a custom :class:`~riprap.Stage`."""
        if not isinstance(stage, Stage):
            raise ConfigError(
                "stage",
                f"{stage!r} does not implement Stage (step_id, process, finish, snapshot, restore)",
            )
        self._check_step_id(stage.step_id)
        return self._with(steps=(*self.steps, StageStep(stage)))

    def _add_op(
        self,
        kind: Literal["map", "filter", "flat_map"],
        step_id: str,
        fn: Callable[..., Any],
        options: StepOptions,
    ) -> Pipeline:
        self._check_step_id(step_id)
        where = f"{kind}({step_id!r})"
        _known(where, options, _STEP_OPTIONS)
        if not callable(fn):
            raise ConfigError(f"{where}.fn", f"must be callable, got {fn!r}")
        concurrency = options.get("concurrency", 1)
        _positive_int(f"{where}.concurrency", concurrency)
        is_async = _is_async(fn)
        if concurrency > 1 and not is_async:
            raise ConfigError(
                f"{where}.concurrency",
                "concurrency > 1 needs an async function (sync steps run fused in one loop)",
            )
        on_error = options.get("on_error", "dlq")
        if on_error not in ("dlq", "stop"):
            raise ConfigError(f"{where}.on_error", f"must be 'dlq' or 'stop', got {on_error!r}")
        for name in ("fallback", "key"):
            value = options.get(name)
            if value is not None and not callable(value):
                raise ConfigError(f"{where}.{name}", f"must be callable, got {value!r}")
        step = OpStep(
            kind,
            step_id,
            fn,
            is_async,
            concurrency=concurrency,
            ordered=options.get("ordered", True),
            record=options.get("record", False),
            on_error=on_error,
            policies=_policies(
                where,
                options.get("retry"),
                options.get("timeout"),
                options.get("attempt_timeout"),
                options.get("breaker"),
                options.get("on_open", "wait"),
                options.get("bulkhead"),
            ),
            fallback=options.get("fallback"),
            key=options.get("key"),
        )
        return self._with(steps=(*self.steps, step))

    def _check_step_id(self, step_id: str) -> None:
        if not isinstance(step_id, str) or not _NAME.match(step_id):
            raise ConfigError(
                "step_id",
                f"must start with a letter or digit and hold only letters, digits, "
                f"'_', '.', '-'; got {step_id!r}",
            )
        if any(step.step_id == step_id for step in self.steps):
            raise ConfigError("step_id", f"{step_id!r} is used by two steps; step ids are unique")

    def validate(self) -> None:
        """Check the whole pipeline; raise :class:`ConfigError` naming the first problem."""
        if self.source_ is None:
            raise ConfigError("source", f"pipeline {self.name!r} has no source; call .source()")
        if self.sink_ is None:
            raise ConfigError("sink", f"pipeline {self.name!r} has no sink; call .sink()")
        self.options.check()

    def open(self) -> AbstractAsyncContextManager[RunningPipeline]:
        """Start the pipeline in the current event loop; leaving the block stops it cleanly.

        Use this to embed riprap in a service::

            async with pipeline.open() as running:
                ...  # serve; running.statistics(), await running.checkpoint()
        """
        from ._runtime import open_pipeline

        return open_pipeline(self)

    async def run(self) -> RunReport:
        """Run until the source is exhausted (or the run is stopped); return the report."""
        async with self.open() as running:
            return await running.wait()


def _policies(
    where: str,
    retry: Retry | None,
    timeout: float | None,
    attempt_timeout: float | None,
    breaker: CircuitBreaker | None,
    on_open: Literal["wait", "raise"],
    bulkhead: Bulkhead | None,
) -> Policies | None:
    """The :class:`Policies` of a step, ``None`` when it has none; errors name the step."""
    for name, value, kind in (
        ("retry", retry, Retry),
        ("breaker", breaker, CircuitBreaker),
        ("bulkhead", bulkhead, Bulkhead),
    ):
        if value is not None and not isinstance(value, kind):
            raise ConfigError(f"{where}.{name}", f"must be a {kind.__name__}, got {value!r}")
    for name, seconds in (("timeout", timeout), ("attempt_timeout", attempt_timeout)):
        if seconds is not None:
            _positive_number(f"{where}.{name}", seconds)
    if on_open not in ("wait", "raise"):
        raise ConfigError(f"{where}.on_open", f"must be 'wait' or 'raise', got {on_open!r}")
    if all(v is None for v in (retry, timeout, attempt_timeout, breaker, bulkhead)):
        return None
    return Policies(
        retry=retry,
        timeout=timeout,
        attempt_timeout=attempt_timeout,
        breaker=breaker,
        on_open=on_open if breaker is not None else "raise",
        bulkhead=bulkhead,
    )


def _known(where: str, given: Mapping[str, object], names: tuple[str, ...]) -> None:
    """Refuse unknown keyword options, suggesting the closest known one."""
    for name in given:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.{name}", f"unknown option{hint}")


def _given(options: PipelineOptions, names: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(options, name) for name in names}


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(option: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(option, f"must be a positive integer, got {value!r}")


def _positive_number(option: str, value: object) -> None:
    if not _is_number(value) or value <= 0:  # type: ignore[operator]
        raise ConfigError(option, f"must be a positive number of seconds, got {value!r}")
