"""The steps of a pipeline definition, and the plan a run executes.

A :class:`Plan` is a validated, immutable pipeline: what the runtime needs and
nothing of the builder, so the runtime never depends on :class:`~riprap.Pipeline`.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from riprap._core.errors import ConfigError
from riprap._core.options import (
    DEFAULT_SINK_RETRY,
    OnError,
    PipelineOptions,
    positive_int,
    positive_number,
)
from riprap.policies import Bulkhead, CircuitBreaker, Policies, Retry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from riprap._core.protocols import Sink, Source, Stage
    from riprap._core.state_stores import StateStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
"""What names of pipelines, steps and branches look like."""

Offload = Literal["thread"]
"""Where a sync step may run instead of the event loop (``offload=`` of a step)."""


class StepOptions(TypedDict, total=False):
    """Keyword options of the map, filter and flat_map steps of a :class:`Pipeline`.

    Attributes:
        concurrency: Calls running at once (default 1): an async function, or a
            sync one with ``offload="thread"``.
        ordered: Keep input order in the output (default) or emit as completed.
        record: Pass whole :class:`~riprap.Record` objects instead of plain values.
        key: Process records of one key one at a time, in order, while different
            keys run concurrently (up to ``concurrency``). With ``state=``: the
            state's key, ``key(value)``, instead of the record's.
        on_error: ``"dlq"`` (default) dead-letters records that raise a
            ``DataError`` when the pipeline has a dead-letter sink; ``"stop"``
            stops the run instead.
        retry: Retry transient failures (:class:`~riprap.policies.Retry`).
        timeout: Seconds for the whole call, retries included.
        attempt_timeout: Seconds for one attempt (a timed-out attempt is retried).
        attempt_grace: Seconds a call that ignores its attempt timeout is
            cancelled again before it is abandoned (counted, its slot freed);
            each attempt then runs in a task of its own. Default: never abandon.
        breaker: The dependency's shared :class:`~riprap.policies.CircuitBreaker`.
        on_open: While the breaker is open, ``"wait"`` (backpressure, the
            default) or ``"raise"`` (the record fails with ``CircuitOpenError``).
        bulkhead: A :class:`~riprap.policies.Bulkhead` limiting concurrent calls.
        fallback: ``fallback(error, value)`` (sync or async) gives a degraded
            result when the call fails for good; counted as a fallback.
        offload: ``"thread"`` runs a sync function in the run's worker threads
            (``offload_threads`` at once), so that it may block without holding
            up the event loop, and so that ``timeout`` and ``attempt_timeout``
            can fire. A thread cannot be killed: a call that times out is
            abandoned (counted), its thread runs on and keeps its slot until
            the function returns. Without it a sync step runs on the event loop.
        state: ``True`` (in memory) or a store
            (``riprap.state.SqliteStore(directory)``) makes it call
            ``fn(value, state)``, ``state`` being the keyed state of the
            record's key (see the keyed state guide); records then go one at a
            time, in order, and the other options are refused.
    """

    concurrency: int
    ordered: bool
    record: bool
    key: Callable[[Any], Any] | None
    on_error: OnError
    retry: Retry | None
    timeout: float | None
    attempt_timeout: float | None
    attempt_grace: float | None
    breaker: CircuitBreaker | None
    on_open: Literal["wait", "raise"]
    bulkhead: Bulkhead | None
    fallback: Callable[..., Any] | None
    offload: Literal["thread"] | None
    state: bool | StateStore


STEP_OPTIONS = tuple(StepOptions.__annotations__)


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
    offload: Offload | None = None

    @property
    def fusable(self) -> bool:
        """Whether this step can run inside a fused sync loop."""
        return (
            not self.is_async
            and self.offload is None
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


OnUnmatched = Literal["drop", "dlq"]
"""What a route does with a record no branch takes: count it as dropped, or dead-letter it."""


@dataclass(frozen=True, slots=True)
class RouteStep:
    """Sends each record to the branches it picks (see :meth:`riprap.Pipeline.route`).

    ``pick`` returns a branch name, several names, or ``None``; ``predicates``
    (a name and a predicate per branch, in branch order) is the other way to
    pick: a record goes to every branch whose predicate holds. Exactly one is set.
    """

    step_id: str
    pick: Callable[[Any], Any] | None
    predicates: tuple[tuple[str, Callable[[Any], Any]], ...]
    on_unmatched: OnUnmatched


@dataclass(frozen=True, slots=True, kw_only=True)
class BranchPlan:
    """One branch of a fan-out: its own steps, ending in its own sink with its own policies."""

    name: str
    steps: tuple[Step, ...]
    sink: Sink
    sink_policies: Policies | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A validated pipeline, as the runtime runs it (see :meth:`riprap.Pipeline.plan`).

    A pipeline ends either in one ``sink`` or in ``branches``, never both:
    every record goes to every branch (a fan-out), or to those ``route`` picks.
    ``side_outputs`` are branches fed by stages that emit to them by name.
    """

    name: str
    options: PipelineOptions
    steps: tuple[Step, ...]
    source: Source
    sink: Sink | None
    sink_policies: Policies | None
    branches: tuple[BranchPlan, ...] = ()
    route: RouteStep | None = None
    side_outputs: tuple[BranchPlan, ...] = ()
    upstream: Plan | None = None
    """The pipeline before a ``through()``: it runs with this one, writing what this one reads."""

    def outputs(self) -> tuple[tuple[Sink, Policies | None], ...]:
        """Every sink with its policies: the one sink or each branch's, then each side output's."""
        main = self.branches if self.sink is None else ()
        ends: tuple[tuple[Sink, Policies | None], ...] = (
            ((self.sink, self.sink_policies),) if self.sink is not None else ()
        )
        ends += tuple((branch.sink, branch.sink_policies) for branch in main)
        return ends + tuple((side.sink, side.sink_policies) for side in self.side_outputs)

    def all_steps(self) -> tuple[Step, ...]:
        """The steps before the sinks, then each branch's and side output's (not the route)."""
        branches = self.branches + self.side_outputs
        return self.steps + tuple(step for branch in branches for step in branch.steps)


def check_name(what: str, name: object) -> None:
    """Refuse a name that is not a letter or digit followed by letters, digits, '_', '.', '-'."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(
            what,
            f"must start with a letter or digit and hold only letters, digits, "
            f"'_', '.', '-'; got {name!r}",
        )


def op_step(
    kind: Literal["map", "filter", "flat_map"],
    step_id: str,
    fn: Callable[..., Any],
    options: StepOptions,
) -> OpStep:
    """A map, filter or flat_map step, its options checked; errors name the step and option."""
    where = f"{kind}({step_id!r})"
    check_known(where, options, STEP_OPTIONS)
    if not callable(fn):
        raise ConfigError(f"{where}.fn", f"must be callable, got {fn!r}")
    if options.get("state"):
        raise ConfigError(
            f"{where}.state", "keyed state is for the steps of a Pipeline, not of a Branch"
        )
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
    return OpStep(
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


def step_policies(
    where: str,
    retry: Retry | None,
    timeout: float | None,
    attempt_timeout: float | None,
    breaker: CircuitBreaker | None,
    on_open: Literal["wait", "raise"],
    bulkhead: Bulkhead | None,
    attempt_grace: float | None = None,
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
            positive_number(f"{where}.{name}", seconds)
    if attempt_grace is not None:
        positive_number(f"{where}.attempt_grace", attempt_grace)
        if attempt_timeout is None:
            raise ConfigError(f"{where}.attempt_grace", "needs an attempt_timeout to follow")
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
        attempt_grace=attempt_grace,
    )


def check_sync_step(where: str, options: StepOptions, *, fn_is_async: bool) -> Offload | None:
    """The step's ``offload``, checked; refuse what cannot work where the function runs.

    A sync function that is not offloaded runs on the event loop: nothing can
    interrupt it, so a ``timeout`` or ``attempt_timeout`` would never fire, and
    concurrent calls would only take turns.

    Raises:
        ConfigError: Naming the step and the option, with the way out.
    """
    offload = options.get("offload")
    if offload is not None and offload != "thread":
        raise ConfigError(f"{where}.offload", f"must be 'thread' or None, got {offload!r}")
    if offload is not None and fn_is_async:
        raise ConfigError(
            f"{where}.offload", "is for sync functions; an async function already yields"
        )
    if fn_is_async or offload is not None:
        return offload
    for name in ("timeout", "attempt_timeout"):
        if options.get(name) is not None:
            raise ConfigError(
                f"{where}.{name}",
                "a sync step runs on the event loop and cannot be interrupted, so this "
                "timeout could never fire; pass offload='thread' to run it in worker "
                "threads (or make the function async)",
            )
    if options.get("concurrency", 1) > 1:
        raise ConfigError(
            f"{where}.concurrency",
            "concurrency > 1 needs an async function or offload='thread' "
            "(sync steps run on the event loop, fused in one loop)",
        )
    return None


def check_steps_fit(steps: Iterable[Step | RouteStep], options: PipelineOptions) -> None:
    """Refuse a step with more calls at once than ``max_in_flight`` records.

    At most ``max_in_flight`` records are in flight, so the rest of the calls
    could never run; their workers would only take memory (a worker task each).

    Raises:
        ConfigError: Naming the step, its concurrency and ``max_in_flight``.
    """
    limit = options.max_in_flight
    for step in steps:
        if isinstance(step, OpStep) and step.concurrency > limit:
            raise ConfigError(
                f"{step.kind}({step.step_id!r}).concurrency",
                f"{step.concurrency} calls can never run at once: at most max_in_flight "
                f"({limit}) records are in flight; lower it or raise max_in_flight",
            )


def sink_policies_for(policies: Policies | None, options: PipelineOptions) -> Policies | None:
    """The sink's policies, the default retry's deadline set to ``options.sink_outage_timeout``.

    Resolved when the plan is made, so the option counts whenever it is set.
    """
    if policies is None or policies.retry is not DEFAULT_SINK_RETRY:
        return policies
    retry = replace(DEFAULT_SINK_RETRY, timeout=options.sink_outage_timeout)
    return replace(policies, retry=retry)


def check_known(where: str, given: Mapping[str, object], names: tuple[str, ...]) -> None:
    """Refuse unknown keyword options, suggesting the closest known one."""
    for name in given:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.{name}", f"unknown option{hint}")


def is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)
