"""The pipeline definition: an immutable description that runs nothing.

Every builder method returns a new :class:`Pipeline`; only :meth:`Pipeline.run`
or :meth:`Pipeline.open` start tasks. Options and steps are checked as they
are added and the whole pipeline again before it runs, so a mistake is a
:class:`~riprap.ConfigError` naming the option, never a surprise mid-run.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal, final

from riprap._core.describe import DescribeFormat, describe
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
    BatchStep,
    Plan,
    RouteStep,
    StageStep,
    Step,
    StepOptions,
    check_name,
    check_steps_fit,
    op_step,
    sink_policies_for,
    step_policies,
)
from riprap._core.topology import Branch, branch_plans, route_step, side_output_plans
from riprap._runtime.keyed_map import keyed_step
from riprap._runtime.keyed_state import keeps_keyed_state
from riprap._runtime.merged_source import MergedSource
from riprap._runtime.runtime import open_pipeline

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from contextlib import AbstractAsyncContextManager

    from typing_extensions import Unpack

    from riprap._runtime.runtime import RunningPipeline
    from riprap.checkpoints import CheckpointBackend
    from riprap.observability._report import RunReport
    from riprap.policies import Bulkhead, CircuitBreaker, Policies, Retry


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
    branches: tuple[tuple[str, Branch], ...]
    route_: RouteStep | None
    side_outputs: tuple[tuple[str, Branch], ...]
    upstream: Pipeline | None

    def __init__(self, name: str, **options: Any) -> None:
        for key in options:
            if key not in OPTION_NAMES:
                close = difflib.get_close_matches(key, OPTION_NAMES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(key, f"unknown pipeline option{hint}")
        check_name("name", name)
        opts = PipelineOptions(**options)
        opts.check()
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "steps", ())
        object.__setattr__(self, "source_", None)
        object.__setattr__(self, "sink_", None)
        object.__setattr__(self, "sink_policies", None)
        object.__setattr__(self, "branches", ())
        object.__setattr__(self, "route_", None)
        object.__setattr__(self, "side_outputs", ())
        object.__setattr__(self, "upstream", None)

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

    def sources(self, **sources: Source) -> Pipeline:
        """Read several sources at once, each under a name::

            pipeline.sources(
                orders=KafkaSource(topic="orders", ...),
                backfill=JsonLinesSource("orders-2025.jsonl"),
            )

        Every source is read concurrently into the one pipeline; the in-flight
        bound (``max_in_flight``) and backpressure hold across them, and a
        source that ends leaves the others reading (the run's input ends with
        the last). A source's partitions are named ``name/partition`` in the
        checkpoint, its metrics and dead letters, so positions stay with the
        name: keep the names when the pipeline changes.

        Raises:
            ConfigError: No source, a name that is not a plain name, one source
                object under two names, or a source already set.
        """
        for name, source in sources.items():
            implements(f"sources.{name}", source, Source, "name, open, read, aclose")
        self._refuse_second("source", self.source_)
        return self._with(source_=MergedSource(sources))

    def with_upstream(self, upstream: Pipeline) -> Pipeline:
        """A copy whose half before its ``.through()`` is ``upstream`` (a worker's share of it).

        Raises:
            ConfigError: The pipeline has no ``.through()``.
        """
        if self.upstream is None:
            raise ConfigError("with_upstream", f"pipeline {self.name!r} has no .through()")
        return self._with(upstream=upstream)

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
        self._refuse_after_branches(".sink()")
        policies = step_policies("sink", retry, timeout, attempt_timeout, breaker, "wait", bulkhead)
        return self._with(sink_=sink, sink_policies=policies)

    def through(
        self,
        step_id: str,
        sink: Sink,
        source: Source,
        *,
        checkpoint: CheckpointBackend | None = None,
    ) -> Pipeline:
        """Write every record so far to ``sink``, and go on from ``source``, which reads it back.

        The way to re-key a stream: write to a Kafka topic keyed by something
        else, and read that topic in a consumer group of its own, so that keyed
        state after this point sees each new key in one partition::

            pipeline.through(
                "by_customer",
                KafkaSink("orders-by-customer", bootstrap_servers=..., key=lambda o: o["customer"]),
                KafkaSource("orders-by-customer", bootstrap_servers=..., group_id="counts"),
                checkpoint=KafkaCheckpoints(by_customer),
            )

        One run runs both halves: the steps so far (checkpointed under the name
        ``<pipeline>.<step_id>``, with the pipeline's options but no changelog)
        and the steps after (under the pipeline's name, checkpointed to
        ``checkpoint``, by default SQLite at ``checkpoint_path``). They start,
        stop and fail together; each is at-least-once on its own, so a record
        written again by the first half after a crash reaches the second half
        twice (drop it there with a keyed filter on its id).

        Raises:
            ConfigError: No source yet, the pipeline already ends (a sink, a
                fan-out or a route), or a keyed-state step before this point
                while the pipeline keeps keyed state in a changelog.
        """
        self._check_step_id(step_id)
        implements("through.sink", sink, Sink, "name, idempotent, open, write, flush, aclose")
        implements("through.source", source, Source, "name, open, read, aclose")
        if self.source_ is None:
            raise ConfigError("through", f"pipeline {self.name!r} has no source before .through()")
        if self.sink_ is not None or self.branches:
            raise ConfigError("through", f"pipeline {self.name!r} already ends before .through()")
        if self.options.changelog is not None and any(
            isinstance(step, StageStep) and keeps_keyed_state(step.stage) for step in self.steps
        ):
            raise ConfigError(
                "through",
                "keyed-state steps before .through() would keep their state without the "
                "pipeline's changelog: put them after it",
            )
        first = self._with(options=replace(self.options, changelog=None))
        first = first.renamed(f"{self.name}.{step_id}").sink(sink)
        first.plan()  # checked now, like a branch
        return self._with(
            options=replace(self.options, checkpoint=checkpoint),
            steps=(),
            source_=source,
            side_outputs=(),
            upstream=first,
        )

    def fan_out(self, **branches: Branch) -> Pipeline:
        """End the pipeline in several branches; every record goes to every branch.

        Each branch (a :class:`~riprap.Branch`, named by its keyword) may have
        steps of its own and ends in a sink with its own policies, counters and
        report line. A record's source position is done only when every branch
        is done with it (written, dead-lettered or dropped by the branch's own
        filter), so a checkpoint never passes a record one sink still lacks::

            pipeline.fan_out(
                db=Branch().sink(SqliteSink("orders.db", table="orders", key="id")),
                audit=Branch().map("line", orjson.dumps).sink(JsonLinesSink("audit.jsonl")),
            )

        Values are shared between branches, not copied: a step must not change a
        value in place. A pipeline ends in one :meth:`sink`, one fan-out or one :meth:`route`.

        Raises:
            ConfigError: Naming the branch and the part: a branch without a sink,
                a step id used twice, two sinks of one name, a second ending.
        """
        if self.sink_ is not None:
            raise ConfigError(
                "fan_out",
                f"pipeline {self.name!r} already ends in sink {self.sink_.name!r}; "
                "put that sink in a Branch of the fan-out instead",
            )
        self._refuse_after_branches(".fan_out()")
        branch_plans(self.name, self.steps, branches, self.options)  # checks them now
        return self._with(branches=tuple(branches.items()))

    def route(
        self,
        step_id: str,
        by: Callable[[Any], Any] | Mapping[str, Callable[[Any], Any]],
        /,
        *,
        on_unmatched: Literal["drop", "dlq"] = "dlq",
        **branches: Branch,
    ) -> Pipeline:
        """End the pipeline in branches that each get only the records ``by`` picks for them.

        ``by`` is either a function of the value returning a branch name, an
        iterable of names (the record goes to each) or ``None``, or a mapping of
        branch names to predicates (the record goes to every branch whose
        predicate holds)::

            pipeline.route(
                "by_region",
                lambda order: order["region"],
                eu=Branch().map("gdpr", redact).sink(eu_sink),
                us=Branch().sink(us_sink, retry=None),
            )

        A record no branch takes (``by`` gave ``None``, nothing, or only names
        that are no branch) is dead-lettered with reason ``unrouted`` and a
        message naming what ``by`` gave (``on_unmatched="dlq"``, which stops the
        run when there is no dead-letter store), or counted as dropped by the
        route (``"drop"``). An exception from ``by`` is handled like a step's.
        ``by`` is called once per record. As with :meth:`fan_out`, a record's
        position is done once every branch it went to is done with it.

        Raises:
            ConfigError: As :meth:`fan_out`, and for a branch no predicate of
                ``by`` can reach.
        """
        if self.sink_ is not None:
            raise ConfigError(
                "route",
                f"pipeline {self.name!r} already ends in sink {self.sink_.name!r}; "
                "put that sink in a Branch of the route instead",
            )
        self._check_step_id(step_id)
        step = route_step(step_id, by, on_unmatched, branches)
        branch_plans(self.name, (*self.steps, step), branches, self.options, call="route")
        return self._with(branches=tuple(branches.items()), route_=step)

    def side_output(
        self,
        name: str,
        to: Sink | Branch,
        *,
        retry: Retry | None = DEFAULT_SINK_RETRY,
        timeout: float | None = None,
        attempt_timeout: float | None = DEFAULT_SINK_ATTEMPT_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        bulkhead: Bulkhead | None = None,
    ) -> Pipeline:
        """Wire the side output ``name`` that stages emit to: to a sink, or a :class:`Branch`.

        A stage names the outputs it may emit to in its ``side_outputs`` and
        gets an emit for each from ``StageContext.side_output(name)`` (a window
        stage's late records, for example). The records there are done only
        once this sink is done with them, as with :meth:`fan_out`. A sink gets
        the policies of :meth:`sink`; a branch may have steps of its own, and
        its sink's policies are given to its ``.sink()``.

        Raises:
            ConfigError: A name that is not a plain name or is wired twice, or
                policies given with a branch. When the pipeline is built, an
                output a stage emits to but nobody wired, and one no stage
                emits to.
        """
        check_name("side_output", name)
        if any(name == wired for wired, _ in self.side_outputs):
            raise ConfigError(f"side_output.{name}", f"side output {name!r} is wired twice")
        if isinstance(to, Branch):
            given = (retry, timeout, attempt_timeout, breaker, bulkhead)
            if given != (DEFAULT_SINK_RETRY, None, DEFAULT_SINK_ATTEMPT_TIMEOUT, None, None):
                raise ConfigError(
                    f"side_output.{name}",
                    "policies for a branch go to its .sink(), not to .side_output()",
                )
            branch = to
        else:
            branch = Branch().sink(
                to,
                retry=retry,
                timeout=timeout,
                attempt_timeout=attempt_timeout,
                breaker=breaker,
                bulkhead=bulkhead,
            )
        return self._with(side_outputs=(*self.side_outputs, (name, branch)))

    def map(self, step_id: str, fn: Callable[..., Any], **options: Unpack[StepOptions]) -> Pipeline:
        """Replace each value with ``fn(value)``; ``fn`` may be sync or async.

        Args:
            step_id: Names the step in logs, metrics and checkpoints.
            fn: The function; with ``record=True`` it receives a :class:`~riprap.Record`;
                with ``state=`` it is called as ``fn(value, state)``, ``state``
                being the :class:`~riprap.state.State` of the record's key.
            **options: See :class:`StepOptions` (concurrency, ordering, keys, error
                routing, resilience policies, keyed state).
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
        if options.get("state"):  # fn(value, state): a stage keeps the state
            stage = keyed_step(kind, step_id, fn, options, self.steps)
            return self._with(steps=(*self.steps, StageStep(stage)))
        return self._with(steps=(*self.steps, op_step(kind, step_id, fn, options)))

    def _refuse_second(self, what: str, current: Source | Sink | None) -> None:
        """A second ``.source()``/``.sink()`` would silently replace the first: refuse it."""
        if current is None:
            return
        if what == "sink":
            hint = "to write to several sinks, end it with .fan_out() or .route() instead"
        else:
            hint = "to read several sources, name each in one .sources(a=..., b=...)"
        raise ConfigError(
            what, f"pipeline {self.name!r} already has a {what} ({current.name!r}); {hint}"
        )

    def _refuse_after_branches(self, call: str) -> None:
        """Nothing follows a fan-out or a route: its branches are where the pipeline ends."""
        if self.branches:
            names = ", ".join(name for name, _ in self.branches)
            ending = "routes" if self.route_ is not None else "fans out"
            raise ConfigError(
                "route" if self.route_ is not None else "fan_out",
                f"pipeline {self.name!r} already {ending} to branches {names}; {call} "
                "cannot follow: add steps and sinks to the branches",
            )

    def _check_step_id(self, step_id: str) -> None:
        check_name("step_id", step_id)
        self._refuse_after_branches(f"step {step_id!r}")
        if any(step.step_id == step_id for step in self.steps):
            raise ConfigError("step_id", f"{step_id!r} is used by two steps; step ids are unique")

    def validate(self) -> None:
        """Check the whole pipeline; raise :class:`ConfigError` naming the first problem."""
        if self.source_ is None:
            raise ConfigError("source", f"pipeline {self.name!r} has no source; call .source()")
        if self.sink_ is None and not self.branches:
            raise ConfigError(
                "sink", f"pipeline {self.name!r} has no sink; call .sink() or .fan_out()"
            )
        self.options.check()

    def plan(self) -> Plan:
        """The validated, immutable plan a run executes.

        Raises:
            ConfigError: The pipeline has no source or sink, an option is impossible,
                or a side output is not wired or has no stage emitting to it.
        """
        self.validate()
        assert self.source_ is not None
        call = "fan_out" if self.route_ is None else "route"
        trunk = self.steps if self.route_ is None else (*self.steps, self.route_)
        branches = (
            branch_plans(self.name, trunk, dict(self.branches), self.options, call=call)
            if self.branches
            else ()
        )
        steps = (*trunk, *(step for branch in branches for step in branch.steps))
        check_steps_fit(steps, self.options)
        sinks = [branch.sink.name for branch in branches]
        sinks += [self.sink_.name] if self.sink_ is not None else []
        sides = side_output_plans(self.name, steps, sinks, dict(self.side_outputs), self.options)
        return Plan(
            name=self.name,
            options=self.options,
            steps=self.steps,
            source=self.source_,
            sink=self.sink_,
            sink_policies=sink_policies_for(self.sink_policies, self.options),
            branches=branches,
            route=self.route_,
            side_outputs=sides,
            upstream=None if self.upstream is None else self.upstream.plan(),
        )

    def describe(self, form: DescribeFormat = "text") -> str:
        """The pipeline's topology: ``"text"`` (an indented outline) or ``"mermaid"`` (a flowchart).

        Shows the source, every step, the fan-out or route and each branch's
        steps and sink, by kind and name only (no values, no options that could
        hold secrets). Parts not yet given are shown as missing. A pipeline in
        two halves (:meth:`through`) shows the first half first, in text.
        """
        first = "" if self.upstream is None or form != "text" else self.upstream.describe()
        return (first and first + "\n") + describe(
            self.name,
            self.source_,
            self.steps,
            self.sink_,
            self.branches,
            self.route_,
            form,
            side_outputs=self.side_outputs,
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
