"""Sagas: per record, a sequence of async steps, each undone by a compensation if a later one fails.

A :class:`Saga` stage runs its :class:`SagaStep` actions in order for every
record. When a step fails for good (a :class:`~riprap.DataError`, or a
transient error its retry policy gave up on), the steps that completed are
compensated in reverse order, and the record's outcome is ``"compensated"``;
otherwise it is ``"completed"``. Either way one :class:`SagaOutcome` dict goes
downstream in place of the record. A compensation that keeps failing (or any
bug) stops the run with :class:`SagaError`; the saga stays in the log and the
next run resumes it.

The saga log
------------

Each record in flight has an entry in the stage state (``snapshot()``): its
saga key, the result of every completed step, the step that failed and the
compensations done. Under asyncio the entry is updated right after an action
returns, with no await in between, so a checkpoint (I3) either shows the step
as done, with its result, or not at all. After a restart the replayed record
finds its entry and continues where the log stops, forward or compensating; a
step the log records as done is never called again. A finished saga stays in
the log until its outcome is done downstream (and every earlier outcome of
its partition too), so a replay re-emits it without calling anything.

What the log cannot know is a step that succeeded after the last checkpoint:
it runs again after a crash. Steps are therefore at-least-once, and every call
carries an idempotency key (``"<saga key>:<step>"`` for actions,
``"<saga key>:<step>:compensate"`` for compensations) that makes the effect
exactly-once when the target honours it.

Sagas that cannot hang
----------------------

Every attempt of an action or a compensation has a timeout (default
:data:`DEFAULT_ATTEMPT_TIMEOUT`): a hung call is a transient error, retried
and then compensated (actions) or stopping the run (compensations), never a
saga that waits forever. A call that ignores its cancellation is abandoned
after :data:`DEFAULT_ATTEMPT_GRACE` (counted as an abandoned call). Timed-out
attempts are counted in the run report and the ``riprap_source_outcomes``
metric as ``saga_attempt_timeouts``. On a graceful stop, sagas still running
when the pipeline's ``drain_timeout`` is up are cancelled (calls ignoring it
are abandoned at once): the stop ends on time and the log shows only the
steps that returned, so the next start resumes them.

The log as keyed state
----------------------

With ``store=`` (a :class:`~riprap.state.MemoryStore` or
:class:`~riprap.state.SqliteStore`) each entry is keyed state of its record's
source partition, written as it changes (cut whether or not its record is
done, as the log must be) and deleted once its outcome is done: in the
pipeline's changelog when it has one, so the log follows its partition to
another member or worker. A record whose partition was given up while its
saga ran is left to the partition's next owner (counted as
``handed_over``): it replays the record from the log as last committed.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, final

import anyio
import anyio.lowlevel
import orjson

from riprap import Batch, ConfigError, DataError, EngineError
from riprap.lowlevel import Ack, DropsOrigin
from riprap.policies import DEFAULT_CLASSIFIER, Policies, PolicyStack, Retry, RetryScheduled
from riprap.state import KeyedState, PartitionGivenUp

if TYPE_CHECKING:
    from collections.abc import Sequence

    from riprap import Clock, StageContext
    from riprap.lowlevel import Emit
    from riprap.policies import PolicyHook, Shelter, Verdict
    from riprap.state import StateStore

__all__ = (
    "DEFAULT_ATTEMPT_GRACE",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_COMPENSATION_RETRY",
    "DEFAULT_STEP_RETRY",
    "Action",
    "Compensation",
    "Saga",
    "SagaError",
    "SagaOutcome",
    "SagaPhase",
    "SagaResult",
    "SagaStatistics",
    "SagaStep",
)

Action = Callable[[Any, str], Awaitable[Any]]
"""``async def action(value, idempotency_key) -> result``; the result must be JSON-serialisable."""
Compensation = Callable[[Any, Any, str], Awaitable[object]]
"""``async def compensate(value, result, idempotency_key)``: undoes what ``action`` did."""
SagaResult = Literal["completed", "compensated"]
SagaPhase = Literal["action", "compensation"]

DEFAULT_STEP_RETRY = Retry()
"""Steps retry transient errors up to 10 attempts within 45 s, then compensate."""
DEFAULT_COMPENSATION_RETRY = Retry(attempts=None, timeout=600.0, wait_max=30.0)
"""Compensations retry transient errors for up to 10 minutes before the run stops."""
DEFAULT_ATTEMPT_TIMEOUT = 30.0
"""Seconds one attempt of an action or a compensation may take, unless its step says otherwise."""
DEFAULT_ATTEMPT_GRACE = 5.0
"""Seconds a timed-out call that ignores its cancellation is waited for before it is abandoned."""

_LOG_VERSION = 1


class SagaOutcome(TypedDict):
    """What a saga emits for each record.

    Attributes:
        key: The saga key.
        outcome: ``"completed"`` or ``"compensated"``.
        results: Result of every step that completed, by step name (JSON form).
        failed_step: The step that failed for good, if any.
        reason: Why it failed: the ``DataError``'s reason or ``retries_exhausted``.
        error: The failing exception's type name.

    .. versionadded:: 0.1
    """

    key: str
    outcome: SagaResult
    results: dict[str, Any]
    failed_step: str | None
    reason: str | None
    error: str | None


@final
@dataclass(frozen=True, slots=True)
class SagaStep:
    """One step of a saga: an action and the compensation that undoes it.

    Attributes:
        name: Unique within the saga; part of idempotency keys and of the log.
        action: ``async def action(value, idempotency_key) -> result``.
        compensate: ``async def compensate(value, result, idempotency_key)``;
            ``None`` for a step with nothing to undo (e.g. the last one).
        retry: Retry policy of the action (default :data:`DEFAULT_STEP_RETRY`);
            ``None`` compensates at the first transient error.
        compensation_retry: Retry policy of the compensation (default
            :data:`DEFAULT_COMPENSATION_RETRY`).
        attempt_timeout: Seconds one attempt (action or compensation) may take
            (default :data:`DEFAULT_ATTEMPT_TIMEOUT`); a timed-out attempt is a
            transient error. ``None`` lets a call run forever: a hung call then
            holds its saga, and a graceful stop ends only by cancelling it.
        attempt_grace: Seconds a timed-out call that ignores its cancellation
            is waited for before it is abandoned (default
            :data:`DEFAULT_ATTEMPT_GRACE`).

    .. versionadded:: 0.1
    """

    name: str
    action: Action
    compensate: Compensation | None = None
    _: KW_ONLY
    retry: Retry | None = DEFAULT_STEP_RETRY
    compensation_retry: Retry | None = DEFAULT_COMPENSATION_RETRY
    attempt_timeout: float | None = DEFAULT_ATTEMPT_TIMEOUT
    attempt_grace: float = DEFAULT_ATTEMPT_GRACE

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ConfigError("SagaStep.name", f"must be non-empty without ':', got {self.name!r}")
        if not callable(self.action):
            raise ConfigError(f"SagaStep({self.name!r}).action", "must be callable")
        if self.compensate is not None and not callable(self.compensate):
            raise ConfigError(f"SagaStep({self.name!r}).compensate", "must be callable or None")


class SagaError(EngineError):
    """A saga step or compensation failed with a bug, or a compensation kept failing.

    The run stops; the saga stays in the log and the next run resumes it (from
    the failed action, or from the pending compensations). It is not a
    :class:`~riprap.PipelineError`, so it does not count towards ``max_crashes``:
    a half-compensated saga is never quarantined out of the log.

    Attributes:
        stage: The saga's ``step_id``.
        key: The saga key.
        step: The step whose action or compensation failed.
        phase: ``"action"`` or ``"compensation"``.
        partition: Source partition of the record, when known.
        offset: Source offset of the record, when known.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        stage: str,
        key: str,
        step: str,
        phase: SagaPhase,
        partition: str | None,
        offset: int | None,
        error: BaseException,
    ) -> None:
        self.stage = stage
        self.key = key
        self.step = step
        self.phase = phase
        self.partition = partition
        self.offset = offset
        where = f" at {partition}@{offset}" if partition is not None else ""
        super().__init__(
            f"saga {stage!r}, key {key!r}: {phase} of step {step!r} failed{where}: "
            f"{type(error).__name__}: {error}"
        )


@final
@dataclass(frozen=True, slots=True)
class SagaStatistics:
    """Counts of a saga stage.

    Attributes:
        in_log: Sagas in the log (running, compensating, or awaiting done).
        completed: Sagas completed by this process.
        compensated: Sagas compensated by this process.
        resumed: Logged sagas picked up again after a restart.
        attempt_timeouts: Attempts of actions and compensations that timed out.

    .. versionadded:: 0.1
    """

    in_log: int
    completed: int
    compensated: int
    resumed: int
    attempt_timeouts: int = 0


@final
class _Entry:
    """One saga in the log; mutated only between awaits, so snapshots are consistent."""

    __slots__ = (
        "error",
        "failed",
        "key",
        "outcome",
        "reason",
        "restored",
        "results",
        "undone",
        "where",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.where: tuple[Batch, int, str] | None = None
        """With a store: the record's batch, index and log identity, which its writes use."""
        self.results: dict[str, Any] = {}
        self.failed: str | None = None
        self.reason: str | None = None
        self.error: str | None = None
        self.undone: list[str] = []
        self.outcome: SagaResult | None = None
        self.restored = False

    def dump(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "results": self.results,
            "failed": self.failed,
            "reason": self.reason,
            "error": self.error,
            "compensated": self.undone,
            "outcome": self.outcome,
        }

    @classmethod
    def load(cls, raw: dict[str, Any]) -> _Entry:
        entry = cls(raw["key"])
        entry.results = dict(raw["results"])
        entry.failed = raw["failed"]
        entry.reason = raw["reason"]
        entry.error = raw["error"]
        entry.undone = list(raw["compensated"])
        entry.outcome = raw["outcome"]
        entry.restored = True
        return entry

    def steps(self) -> set[str]:
        named = {*self.results, *self.undone}
        return named if self.failed is None else {*named, self.failed}

    def output(self) -> SagaOutcome:
        assert self.outcome is not None
        return SagaOutcome(
            key=self.key,
            outcome=self.outcome,
            results=dict(self.results),
            failed_step=self.failed,
            reason=self.reason,
            error=self.error,
        )


@final
class _Emission:
    """An emitted batch of outcomes whose log entries go once it is done."""

    __slots__ = ("done", "entries")

    def __init__(self, entries: list[tuple[str, _Entry]]) -> None:
        self.entries = entries
        self.done = False


_Calls = tuple[
    Callable[[Any, str], Awaitable[Any]], Callable[[Any, Any, str], Awaitable[object]] | None
]


@final
class Saga:
    """A stage that runs a saga per record: steps in order, compensations in reverse on failure.

    Records of different keys run concurrently (up to ``concurrency`` within a
    batch), records of one key one at a time in input order. The batch's
    outcomes go downstream together, in input order, under an ack that
    retains the input's until they are done (I1).

    Args:
        step_id: The stage's name (logs, metrics, checkpoint state).
        steps: The steps, in execution order; names must be unique.
        key: ``key(value)`` gives the saga key (e.g. an order id). Default: the
            record key, else ``"<partition>@<offset>"``. Idempotency keys are
            built from it, so it must identify the business transaction: a
            second record with the same key runs under the same idempotency keys.
        concurrency: Most sagas running at once.
        store: Keep the saga log as keyed state in this store (see the
            module's docs), so that it scales out with its partitions.

    Raises:
        ConfigError: No steps, duplicate step names, ``concurrency < 1``, or
            a ``store`` that is not one.

    Example::

        saga = Saga(
            "order",
            [
                SagaStep("reserve", inventory.reserve, inventory.release),
                SagaStep("charge", payments.charge, payments.refund),
                SagaStep("ship", shipping.schedule),
            ],
            key=lambda order: order["id"],
        )
        pipeline = riprap.Pipeline("orders").source(...).stage(saga).sink(...)

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_calls",
        "_classifiers",
        "_compensated",
        "_completed",
        "_context",
        "_emissions",
        "_log",
        "_resumed",
        "_timeouts",
        "concurrency",
        "key",
        "keyed_state",
        "step_id",
        "steps",
    )

    def __init__(
        self,
        step_id: str,
        steps: list[SagaStep] | tuple[SagaStep, ...],
        *,
        key: Callable[[Any], object] | None = None,
        concurrency: int = 16,
        store: StateStore | None = None,
    ) -> None:
        if store is not None and not isinstance(getattr(store, "kind", None), str):
            raise ConfigError(
                f"Saga({step_id!r}).store",
                f"must be MemoryStore() or SqliteStore(directory), got {store!r}",
            )
        if not steps:
            raise ConfigError(f"Saga({step_id!r}).steps", "needs at least one step")
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ConfigError(f"Saga({step_id!r}).steps", f"step names repeat: {names}")
        if concurrency < 1:
            raise ConfigError(f"Saga({step_id!r}).concurrency", f"must be >= 1, got {concurrency}")
        self.step_id = step_id
        self.steps = tuple(steps)
        self.key = key
        self.concurrency = concurrency
        self.keyed_state = None if store is None else KeyedState(store, in_flight=True)
        """The log as keyed state, when a store keeps it (``store=``)."""
        self._log: dict[str, _Entry] = {}
        self._emissions: dict[str | None, deque[_Emission]] = {}
        self._completed = 0
        self._compensated = 0
        self._resumed = 0
        self._timeouts = 0
        self._context: StageContext | None = None
        self._classifiers = {
            s.name: (s.retry.classifier if s.retry else DEFAULT_CLASSIFIER).classify for s in steps
        }
        self._calls = self._wrap(None)

    # -- Stage protocol --------------------------------------------------------

    async def open(self, context: StageContext) -> None:
        """Put the steps' policies on the pipeline's clock, hooks and shelter."""
        self._context = context
        hooks = (*context.policy_hooks, self._on_policy_event)
        self._calls = self._wrap(context.clock, hooks, context.shelter)
        if self.keyed_state is not None:
            self._log, self._emissions = {}, {}
            self.keyed_state.open(context, self.step_id)
        await anyio.lowlevel.checkpoint()

    async def process(self, batch: Batch, emit: Emit) -> None:
        """Run the batch's sagas, then emit their outcomes in input order.

        Raises:
            SagaError: An action raised a bug, or a compensation failed for good.
        """
        if not batch.items:
            batch.ack.release()
            return
        identities, keys = self._identify(batch)
        entries: list[_Entry | None] = [None] * len(batch.items)
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        work = iter(groups.values())

        async def worker() -> None:
            for indices in work:
                for i in indices:
                    entries[i] = await self._run(batch, i, keys[i], identities[i])

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(self.concurrency, len(groups))):
                    tg.start_soon(worker)
        except BaseExceptionGroup as group:
            error = _first_error(group)
            raise error from error.__cause__
        finished: list[tuple[str, _Entry]] = []
        drops: list[int] = []
        for identity, entry in zip(identities, entries, strict=True):
            if entry is None:  # handed over to the partition's next owner
                drops.append(len(finished))
            else:
                finished.append((identity, entry))
        if drops and self._context is not None:
            self._context.count("handed_over", len(drops))
        if not finished:
            batch.ack.release()
            return
        await self._emit(batch, finished, emit, drops)

    async def finish(self, emit: Emit) -> None:
        """Nothing is buffered: every batch's outcomes were emitted with it."""
        await anyio.lowlevel.checkpoint()

    def snapshot(self) -> Any:
        """The saga log (a JSON copy), saved in the same checkpoint as the positions.

        With a store, what its keyed state hands the checkpoint.
        """
        if self.keyed_state is not None:
            return self.keyed_state.snapshot()
        sagas = {identity: entry.dump() for identity, entry in self._log.items()}
        state: dict[str, Any] = orjson.loads(
            orjson.dumps({"version": _LOG_VERSION, "sagas": sagas})
        )
        return state

    def restore(self, state: Any) -> None:
        """Load the saga log of a checkpoint; its sagas resume when their records replay.

        Raises:
            ConfigError: The log has an unknown version or names a step the
                saga no longer has.
        """
        if self.keyed_state is not None:
            self.keyed_state.restore(state)
            return
        option = f"Saga({self.step_id!r}) state"
        if not isinstance(state, dict) or state.get("version") != _LOG_VERSION:
            raise ConfigError(option, f"unknown saga log format: {state!r:.80}")
        for identity, raw in state["sagas"].items():
            self._log[identity] = self._loaded(raw)

    def _loaded(self, raw: dict[str, Any]) -> _Entry:
        """A logged saga, checked against the steps.

        Raises:
            ConfigError: It names a step the saga no longer has.
        """
        entry = _Entry.load(raw)
        unknown = entry.steps() - {step.name for step in self.steps}
        if unknown:
            raise ConfigError(
                f"Saga({self.step_id!r}) state",
                f"saga {entry.key!r} names steps the saga lacks: {sorted(unknown)}",
            )
        return entry

    def statistics(self) -> SagaStatistics:
        """Counts of sagas in the log, completed, compensated and resumed."""
        return SagaStatistics(
            in_log=len(self._log),
            completed=self._completed,
            compensated=self._compensated,
            resumed=self._resumed,
            attempt_timeouts=self._timeouts,
        )

    def __repr__(self) -> str:
        return f"Saga({self.step_id!r}, steps={[s.name for s in self.steps]})"

    # -- running one saga ------------------------------------------------------

    async def _run(self, batch: Batch, index: int, key: str, identity: str) -> _Entry | None:
        """The record's saga, run or resumed to its outcome (``None``: handed over)."""
        entry = self._log.get(identity)
        if entry is not None and entry.where is not None and _given_up(*entry.where[:2]):
            entry = None  # a run of the record under an assignment since revoked: not ours
        if entry is None and self.keyed_state is not None:
            try:
                raw = self.keyed_state.state(batch, index, identity).get()
            except PartitionGivenUp:
                return None
            if raw is not None:
                entry = self._log[identity] = self._loaded(raw)
        if entry is not None and entry.restored:
            entry.restored = False
            self._resumed += 1
        else:
            entry = self._log[identity] = _Entry(key)
        entry.where = (batch, index, identity)
        if entry.outcome is not None:  # finished before the restart: re-emit only
            return entry
        value = batch.items[index]
        if entry.failed is None:
            await self._forward(entry, value, batch, index)
        if entry.failed is not None:
            await self._compensate(entry, value, batch, index)
            entry.outcome = "compensated"
            self._compensated += 1
        else:
            entry.outcome = "completed"
            self._completed += 1
        self._save(entry)
        return entry

    def _save(self, entry: _Entry) -> None:
        """With a store: write the entry as it is now (no await since it changed)."""
        if self.keyed_state is None or entry.where is None:
            return
        batch, index, identity = entry.where
        try:
            self.keyed_state.state(batch, index, identity).set(entry.dump())
        except PartitionGivenUp:
            entry.where = None  # the next owner replays the record from the log it has

    def _forget(self, identity: str, entry: _Entry) -> None:
        """The entry's outcome is done: it leaves the log (and the store)."""
        del self._log[identity]
        if self.keyed_state is not None and entry.where is not None:
            batch, index, _ = entry.where
            entry.where = None
            with contextlib.suppress(PartitionGivenUp):  # the next owner's log, not ours
                self.keyed_state.state(batch, index, identity).delete()

    async def _forward(self, entry: _Entry, value: Any, batch: Batch, index: int) -> None:
        for step in self.steps:
            if step.name in entry.results:
                continue
            action, _ = self._calls[step.name]
            try:
                result = await action(value, f"{entry.key}:{step.name}")
            except Exception as error:
                self._count_timeout(error)
                verdict: Verdict = self._classifiers[step.name](error)
                if verdict == "bug":
                    raise self._error(entry, step.name, "action", batch, index, error) from error
                entry.failed = step.name
                entry.reason = error.reason if isinstance(error, DataError) else "retries_exhausted"
                entry.error = type(error).__name__
                self._save(entry)
                return
            # Logged before the next await: a checkpoint never shows the step done
            # without its result, and a step it shows done is never called again.
            try:
                entry.results[step.name] = orjson.loads(orjson.dumps(result))
            except TypeError as error:  # not JSON-serialisable: a bug of the action
                raise self._error(entry, step.name, "action", batch, index, error) from error
            self._save(entry)

    async def _compensate(self, entry: _Entry, value: Any, batch: Batch, index: int) -> None:
        for step in reversed(self.steps):
            if step.name not in entry.results or step.name in entry.undone:
                continue
            _, compensate = self._calls[step.name]
            if compensate is not None:
                key = f"{entry.key}:{step.name}:compensate"
                try:
                    await compensate(value, entry.results[step.name], key)
                except Exception as error:
                    self._count_timeout(error)
                    phase: SagaPhase = "compensation"
                    raise self._error(entry, step.name, phase, batch, index, error) from error
            entry.undone.append(step.name)
            self._save(entry)

    # -- helpers ---------------------------------------------------------------

    def _wrap(
        self,
        clock: Clock | None,
        hooks: Sequence[PolicyHook] = (),
        shelter: Shelter | None = None,
    ) -> dict[str, _Calls]:
        """Each step's action and compensation behind its own retry and attempt timeout."""
        calls: dict[str, _Calls] = {}
        for step in self.steps:
            name = f"{self.step_id}.{step.name}"
            stack = functools.partial(_stack, self.step_id, step, clock, hooks, shelter)
            action = stack(step.retry, name).wrap(step.action)
            compensate = None
            if step.compensate is not None:
                undo = stack(step.compensation_retry, f"{name}.compensate")
                compensate = undo.wrap(step.compensate)
            calls[step.name] = (action, compensate)
        return calls

    def _on_policy_event(self, event: object) -> None:
        """Count a timed-out attempt that is retried (the last one is counted where it lands)."""
        if isinstance(event, RetryScheduled):
            self._count_timeout(event.error)

    def _count_timeout(self, error: BaseException) -> None:
        if not isinstance(error, TimeoutError):
            return
        self._timeouts += 1
        if self._context is not None:
            self._context.count("saga_attempt_timeouts", 1)

    def _identify(self, batch: Batch) -> tuple[list[str], list[str]]:
        """Each record's log identity (its source position) and saga key."""
        identities: list[str] = []
        keys: list[str] = []
        for i, value in enumerate(batch.items):
            where = batch.locate(i)
            position = None
            record_key: object = None
            if where is not None:
                source, j = where
                position = f"{source.partition}@{source.offset_of(j)}"
                record_key = source.keys[j] if source.keys is not None else None
            if self.key is not None:
                key = _text(self.key(value))
            elif record_key is not None:
                key = _text(record_key)
            elif position is not None:
                key = position
            else:
                raise ConfigError(
                    f"Saga({self.step_id!r}).key",
                    "records carry neither a key nor a source position: pass key=",
                )
            keys.append(key)
            identities.append(position if position is not None else f"key={key}")
        return identities, keys

    async def _emit(
        self, batch: Batch, entries: list[tuple[str, _Entry]], emit: Emit, drops: list[int]
    ) -> None:
        partition = batch.position(0)[0]
        emission = _Emission(entries)
        self._emissions.setdefault(partition, deque()).append(emission)
        ack = Ack(functools.partial(self._emitted, partition, emission, batch.ack))
        origin = DropsOrigin(batch.origin, drops) if drops else batch.origin
        await emit(Batch([entry.output() for _, entry in entries], ack, origin))

    def _emitted(self, partition: str | None, emission: _Emission, input_ack: Ack) -> None:
        """Outcomes done: drop their log entries, in emission order, and release the input.

        Entries leave in emission order per partition, in the same synchronous
        step that releases the input ack: a checkpoint sees the entry or a
        position past its record, never neither (a replay without the log).
        """
        emission.done = True
        queue = self._emissions[partition]
        while queue and queue[0].done:
            for identity, entry in queue.popleft().entries:
                if self._log.get(identity) is entry:
                    self._forget(identity, entry)
        if not queue:
            del self._emissions[partition]
        input_ack.release()

    def _error(
        self, entry: _Entry, step: str, phase: SagaPhase, batch: Batch, index: int, error: Exception
    ) -> SagaError:
        partition, offset = batch.position(index)
        return SagaError(
            stage=self.step_id,
            key=entry.key,
            step=step,
            phase=phase,
            partition=partition,
            offset=offset,
            error=error,
        )


def _given_up(batch: Batch, index: int) -> bool:
    """Whether the record's partition was given up since it was read (a group rebalance)."""
    where = batch.locate(index)
    assignment = None if where is None else where[0].assignment
    return assignment is not None and assignment.revoked


def _stack(
    stage: str,
    step: SagaStep,
    clock: Clock | None,
    hooks: Sequence[PolicyHook],
    shelter: Shelter | None,
    retry: Retry | None,
    dependency: str,
) -> PolicyStack:
    """The policy stack of one action or compensation: retry, then a timed attempt."""
    grace = step.attempt_grace if step.attempt_timeout is not None else None
    policies = Policies(retry=retry, attempt_timeout=step.attempt_timeout, attempt_grace=grace)
    return PolicyStack(
        policies, stage=stage, dependency=dependency, clock=clock, hooks=hooks, shelter=shelter
    )


def _text(key: object) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return str(key)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a task group's (nested) exception group."""
    cancelled = anyio.get_cancelled_exc_class()
    found: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, cancelled):
            found.append(exc)

    walk(group)
    return found[0] if found else group
