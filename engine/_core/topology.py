"""Branches of a pipeline that fans out or routes: each its own steps, ending in its own sink.

A :class:`Branch` is built like a :class:`~riprap.Pipeline` without a source:
immutable, every call returns a new branch. :func:`branch_plans` checks a
pipeline's branches at build time (unique step ids and sink names, a sink at
the end of every branch) and turns them into the frozen plans the runtime
runs; :func:`route_step` checks how a route picks its branches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from riprap._core.errors import ConfigError
from riprap._core.options import (
    DEFAULT_SINK_ATTEMPT_TIMEOUT,
    DEFAULT_SINK_RETRY,
    PipelineOptions,
    implements,
    positive_int,
    positive_number,
)
from riprap._core.protocols import Sink, Stage
from riprap._core.steps import (
    BatchStep,
    BranchPlan,
    OnUnmatched,
    RouteStep,
    StageStep,
    Step,
    StepOptions,
    check_name,
    op_step,
    sink_policies_for,
    step_policies,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from riprap.policies import Bulkhead, CircuitBreaker, Policies, Retry


@final
@dataclass(frozen=True, slots=True)
class Branch:
    """One branch of a fan-out or route: steps of its own, then a sink with its own policies.

    Pass branches to :meth:`riprap.Pipeline.fan_out`, each under a name::

        pipeline.fan_out(
            db=Branch().sink(SqliteSink("orders.db", table="orders", key="id")),
            events=Branch().map("encode", orjson.dumps).sink(KafkaSink(...)),
        )

    Every record reaches every branch; its source position is done only when
    every branch is done with it. Step ids are unique across the pipeline and
    its branches, sink names across the branches.
    """

    steps: tuple[Step, ...]
    sink_: Sink | None
    sink_policies: Policies | None

    def __init__(self) -> None:
        object.__setattr__(self, "steps", ())
        object.__setattr__(self, "sink_", None)
        object.__setattr__(self, "sink_policies", None)

    def _with(self, **changes: Any) -> Branch:
        new = object.__new__(Branch)
        for name in ("steps", "sink_", "sink_policies"):
            object.__setattr__(new, name, changes.get(name, getattr(self, name)))
        return new

    def map(self, step_id: str, fn: Callable[..., Any], **options: Unpack[StepOptions]) -> Branch:
        """Replace each value with ``fn(value)`` (as :meth:`riprap.Pipeline.map`)."""
        return self._add(step_id, lambda: op_step("map", step_id, fn, options))

    def filter(
        self, step_id: str, fn: Callable[..., Any], **options: Unpack[StepOptions]
    ) -> Branch:
        """Keep values for which ``fn(value)`` is truthy, in this branch only."""
        return self._add(step_id, lambda: op_step("filter", step_id, fn, options))

    def flat_map(
        self, step_id: str, fn: Callable[..., Any], **options: Unpack[StepOptions]
    ) -> Branch:
        """Replace each value with every item of the iterable ``fn(value)`` returns."""
        return self._add(step_id, lambda: op_step("flat_map", step_id, fn, options))

    def batch(self, step_id: str, size: int, *, timeout: float | None = None) -> Branch:
        """Group values into lists of ``size`` (as :meth:`riprap.Pipeline.batch`)."""

        def make() -> BatchStep:
            positive_int(f"batch({step_id!r}).size", size)
            if timeout is not None:
                positive_number(f"batch({step_id!r}).timeout", timeout)
            return BatchStep(step_id, size, timeout)

        return self._add(step_id, make)

    def stage(self, stage: Stage) -> Branch:
        """Add a custom :class:`~riprap.Stage` (its state is saved with the pipeline's)."""
        implements("stage", stage, Stage, "step_id, process, finish, snapshot, restore")
        return self._add(stage.step_id, lambda: StageStep(stage))

    def sink(
        self,
        sink: Sink,
        *,
        retry: Retry | None = DEFAULT_SINK_RETRY,
        timeout: float | None = None,
        attempt_timeout: float | None = DEFAULT_SINK_ATTEMPT_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        bulkhead: Bulkhead | None = None,
    ) -> Branch:
        """End the branch in ``sink``, with the policies of :meth:`riprap.Pipeline.sink`."""
        implements("sink", sink, Sink, "name, idempotent, open, write, flush, aclose")
        if self.sink_ is not None:
            raise ConfigError(
                "sink",
                f"this branch already ends in sink {self.sink_.name!r}; a branch has one "
                "sink (fan out again with more branches)",
            )
        where = f"sink({sink.name!r})"
        policies = step_policies(where, retry, timeout, attempt_timeout, breaker, "wait", bulkhead)
        return self._with(sink_=sink, sink_policies=policies)

    def _add(self, step_id: str, make: Callable[[], Step]) -> Branch:
        check_name("step_id", step_id)
        if self.sink_ is not None:
            raise ConfigError(
                f"step {step_id!r}",
                f"comes after the branch's sink {self.sink_.name!r}; steps go before .sink()",
            )
        if any(step.step_id == step_id for step in self.steps):
            raise ConfigError("step_id", f"{step_id!r} is used by two steps; step ids are unique")
        return self._with(steps=(*self.steps, make()))


def branch_plans(
    pipeline: str,
    trunk: Iterable[Step | RouteStep],
    branches: Mapping[str, Branch],
    options: PipelineOptions,
    *,
    call: str = "fan_out",
) -> tuple[BranchPlan, ...]:
    """A pipeline's branches as plans, checked as a whole; ``trunk`` holds the ids in use.

    Raises:
        ConfigError: No branch, a branch that is not a :class:`Branch` or has no
            sink, a step id used twice in the pipeline, or two sinks of one name;
            the message names the branches and the parts.
    """
    if not branches:
        raise ConfigError(call, f"pipeline {pipeline!r}: {call}() needs at least one branch")
    step_ids = {step.step_id: "the pipeline" for step in trunk}
    sinks: dict[str, str] = {}
    plans = []
    for name, branch in branches.items():
        check_name(f"{call} branch {name!r}", name)
        if not isinstance(branch, Branch):
            raise ConfigError(f"{call}.{name}", f"must be a riprap.Branch, got {branch!r}")
        if branch.sink_ is None:
            raise ConfigError(f"{call}.{name}", f"branch {name!r} has no sink; end it with .sink()")
        for step in branch.steps:
            other = step_ids.setdefault(step.step_id, f"branch {name!r}")
            if other != f"branch {name!r}":
                raise ConfigError(
                    "step_id",
                    f"{step.step_id!r} is used in {other} and in branch {name!r}; "
                    "step ids are unique across a pipeline and its branches",
                )
        sink_name = branch.sink_.name
        if sink_name in sinks:
            raise ConfigError(
                f"{call}.{name}",
                f"branches {sinks[sink_name]!r} and {name!r} both end in a sink named "
                f"{sink_name!r}; sinks of one pipeline need distinct names (metrics, "
                "reports and dead letters tell them apart by name)",
            )
        sinks[sink_name] = name
        plans.append(
            BranchPlan(
                name=name,
                steps=branch.steps,
                sink=branch.sink_,
                sink_policies=sink_policies_for(branch.sink_policies, options),
            )
        )
    return tuple(plans)


def route_step(
    step_id: str,
    by: Callable[[Any], Any] | Mapping[str, Callable[[Any], Any]],
    on_unmatched: OnUnmatched,
    branches: Mapping[str, Branch],
) -> RouteStep:
    """How a route picks branches, checked against the branch names.

    Raises:
        ConfigError: ``by`` is neither callable nor a mapping of callables, a
            predicate names no branch, a branch has no predicate (it could never
            be reached), or ``on_unmatched`` is not ``"drop"`` or ``"dlq"``.
    """
    where = f"route({step_id!r})"
    if on_unmatched not in ("drop", "dlq"):
        raise ConfigError(f"{where}.on_unmatched", f"must be 'drop' or 'dlq', got {on_unmatched!r}")
    if callable(by):
        return RouteStep(step_id, by, (), on_unmatched)
    if not isinstance(by, Mapping):
        raise ConfigError(
            f"{where}.by",
            f"must be a function returning branch names, or a mapping of branch names "
            f"to predicates; got {by!r}",
        )
    for name, predicate in by.items():
        if name not in branches:
            raise ConfigError(
                f"{where}.by",
                f"has a predicate for {name!r}, which is not a branch ({', '.join(branches)})",
            )
        if not callable(predicate):
            raise ConfigError(f"{where}.by.{name}", f"must be callable, got {predicate!r}")
    unreachable = [name for name in branches if name not in by]
    if unreachable:
        raise ConfigError(
            f"{where}.{unreachable[0]}",
            f"branch {unreachable[0]!r} has no predicate in by=, so no record could reach it",
        )
    return RouteStep(step_id, None, tuple((name, by[name]) for name in branches), on_unmatched)


def declared_outputs(stage: Stage) -> tuple[str, ...]:
    """The side outputs ``stage`` may emit to (its optional ``side_outputs``), checked.

    Raises:
        ConfigError: ``side_outputs`` is not a collection of names.
    """
    names = getattr(stage, "side_outputs", ())
    if isinstance(names, str) or not isinstance(names, tuple | list | frozenset | set):
        raise ConfigError(
            f"stage {stage.step_id!r}.side_outputs",
            f"must be a tuple of output names, got {names!r}",
        )
    for name in names:
        check_name(f"stage {stage.step_id!r}.side_outputs", name)
    return tuple(names)


def side_output_plans(
    pipeline: str,
    steps: Iterable[Step | RouteStep],
    sinks: Iterable[str],
    outputs: Mapping[str, Branch],
    options: PipelineOptions,
) -> tuple[BranchPlan, ...]:
    """Side outputs as plans, checked against the stages that emit to them.

    ``steps`` are every step of the pipeline and its branches, ``sinks`` the
    names of their sinks.

    Raises:
        ConfigError: A stage emits to an output that is not wired (nothing it
            emitted there could go anywhere), an output no stage emits to, a
            stage of a side output that emits to side outputs itself, a step id
            used twice or a sink name used twice; naming the stage and output.
    """
    steps = tuple(steps)
    emitters: dict[str, list[str]] = {}
    for step in steps:
        if isinstance(step, StageStep):
            for name in declared_outputs(step.stage):
                emitters.setdefault(name, []).append(step.step_id)
    for name, stages in emitters.items():
        if name not in outputs:
            raise ConfigError(
                f"stage {stages[0]!r}",
                f"emits to side output {name!r}, which is not wired; wire it with "
                f".side_output({name!r}, sink) (or stop the stage emitting there)",
            )
    for name in outputs:
        if name not in emitters:
            raise ConfigError(
                f"side_output.{name}",
                f"no stage emits to side output {name!r}, so its sink would never get a "
                "record; a stage names its outputs in side_outputs",
            )
    if not outputs:
        return ()
    plans = branch_plans(pipeline, steps, outputs, options, call="side_output")
    taken = set(sinks)
    for plan in plans:
        for step in plan.steps:
            if isinstance(step, StageStep) and declared_outputs(step.stage):
                raise ConfigError(
                    f"stage {step.step_id!r}",
                    f"is in side output {plan.name!r} and emits to side outputs itself; "
                    "side outputs do not feed each other (that could make a cycle)",
                )
        if plan.sink.name in taken:
            raise ConfigError(
                f"side_output.{plan.name}",
                f"ends in a sink named {plan.sink.name!r}, as another sink of the pipeline "
                "does; sinks of one pipeline need distinct names",
            )
    return plans
