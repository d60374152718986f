"""The pipeline definition: an immutable description that runs nothing.

Every builder method returns a new :class:`Pipeline`; only :meth:`Pipeline.run`
or :meth:`Pipeline.open` start tasks. Options and steps are checked as they
are added and the whole pipeline again before it runs, so a mistake is a
:class:`~riprap.ConfigError` naming the option, never a surprise mid-run.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal, final

from riprap._core.errors import ConfigError
from riprap._core.options import (
    DEFAULT_SINK_ATTEMPT_TIMEOUT,
    DEFAULT_SINK_RETRY,
    OPTION_NAMES,
    PipelineOptions,
    implements,
    positive_int,
    positive_number,
)
from riprap._core.protocols import Sink, Source, Stage
from riprap._core.steps import (
    STEP_OPTIONS,
    BatchStep,
    OpStep,
    Plan,
    StageStep,
    Step,
    StepOptions,
    check_known,
    check_sync_step,
    is_async,
    sink_policies_for,
    step_policies,
)
from riprap._runtime.runtime import open_pipeline

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from contextlib import AbstractAsyncContextManager

    from typing_extensions import Unpack

    from riprap._runtime.runtime import RunningPipeline
    from riprap.observability._report import RunReport
    from riprap.policies import Bulkhead, CircuitBreaker, Policies, Retry

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


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
            if key not in OPTION_NAMES:
                close = difflib.get_close_matches(key, OPTION_NAMES, n=1)
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
        implements("source", source, Source, "name, open, read, aclose")
        self._refuse_second("source", self.source_)
        return self._with(source_=source)

    def with_source(self, source: Source) -> Pipeline:
        """A copy reading from another source (the CLI replays dead letters this way).

        Unlike :meth:`source`, which refuses a second source, this replaces it on purpose.
        """
        implements("source", source, Source, "name, open, read, aclose")
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

        By default the sink rides out an outage: a write that fails
        transiently is retried with backoff (up to 10 s apart) for
        ``sink_outage_timeout`` seconds (a pipeline option, 15 minutes by
        default), each attempt within ``attempt_timeout``; meanwhile the source
        waits (no more than ``max_in_flight`` records are held). When the sink
        stays down longer the run stops with an error naming it, without loss
        (the checkpoint does not pass unwritten records). Pass ``retry=`` to
        choose otherwise. A breaker on the sink always waits while open.
        """
        implements("sink", sink, Sink, "name, idempotent, open, write, flush, aclose")
        self._refuse_second("sink", self.sink_)
        policies = step_policies("sink", retry, timeout, attempt_timeout, breaker, "wait", bulkhead)
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
        positive_int(f"batch({step_id!r}).size", size)
        if timeout is not None:
            positive_number(f"batch({step_id!r}).timeout", timeout)
        return self._with(steps=(*self.steps, BatchStep(step_id, size, timeout)))

    def stage(self, stage: Stage) -> Pipeline:
        """Add a custom :class:`~riprap.Stage`."""
        implements("stage", stage, Stage, "step_id, process, finish, snapshot, restore")
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
        check_known(where, options, STEP_OPTIONS)
        if not callable(fn):
            raise ConfigError(f"{where}.fn", f"must be callable, got {fn!r}")
        concurrency = options.get("concurrency", 1)
        positive_int(f"{where}.concurrency", concurrency)
        fn_is_async = is_async(fn)
        policies = step_policies(
            where,
            options.get("retry"),
            options.get("timeout"),
            options.get("attempt_timeout"),
            options.get("breaker"),
            options.get("on_open", "wait"),
            options.get("bulkhead"),
            options.get("attempt_grace"),
        )
        offload = check_sync_step(where, options, fn_is_async=fn_is_async)
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
            fn_is_async,
            concurrency=concurrency,
            ordered=options.get("ordered", True),
            record=options.get("record", False),
            on_error=on_error,
            policies=policies,
            fallback=options.get("fallback"),
            key=options.get("key"),
            offload=offload,
        )
        return self._with(steps=(*self.steps, step))

    def _refuse_second(self, what: str, current: Source | Sink | None) -> None:
        """A second ``.source()``/``.sink()`` would silently replace the first: refuse it."""
        if current is not None:
            raise ConfigError(
                what,
                f"pipeline {self.name!r} already has a {what} ({current.name!r}); a pipeline "
                f"has one source and one sink, so .{what}() is called once",
            )

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

    def plan(self) -> Plan:
        """The validated, immutable plan a run executes.

        Raises:
            ConfigError: The pipeline has no source or sink, or an option is impossible.
        """
        self.validate()
        assert self.source_ is not None
        assert self.sink_ is not None
        return Plan(
            name=self.name,
            options=self.options,
            steps=self.steps,
            source=self.source_,
            sink=self.sink_,
            sink_policies=sink_policies_for(self.sink_policies, self.options),
        )

    def open(self) -> AbstractAsyncContextManager[RunningPipeline]:
        """Start the pipeline in the current event loop; leaving the block stops it cleanly.

        Use this to embed riprap in a service::

            async with pipeline.open() as running:
                ...  # serve; running.statistics(), await running.checkpoint()
        """
        return open_pipeline(self.plan())

    async def run(self) -> RunReport:
        """Run until the source is exhausted (or the run is stopped); return the report."""
        async with self.open() as running:
            return await running.wait()


def _given(options: PipelineOptions, names: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(options, name) for name in names}
