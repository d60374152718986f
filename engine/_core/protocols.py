"""The plug-in protocols: sources, sinks and stages.

Sources hand the engine :class:`~riprap.SourceBatch` objects; sinks and stages
receive :class:`~riprap.Batch` objects. None of them may block the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from riprap._core.errors import ConfigError
from riprap._core.records import Batch, SourceBatch

if TYPE_CHECKING:
    from riprap._core.clock import Clock
    from riprap._core.state_stores import StateLog
    from riprap.policies import Shelter

Emit = Callable[[Batch], Awaitable[None]]


async def _no_drain(partitions: Collection[str], within: float) -> Mapping[str, int]:
    """The ``drain`` of a hand-made context: nothing is tracked, nothing to wait for."""
    return {}


def _no_count(outcome: str, count: int) -> None:
    """The ``count`` of a hand-made context: reports nothing."""


async def _no_assigned(starts: Mapping[str, int | None]) -> Mapping[str, int]:
    """The ``assigned`` of a hand-made context: no state to restore, no floor."""
    return {}


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source learns when it opens.

    Attributes:
        pipeline: The pipeline's name.
        positions: Checkpointed position per partition: resume from there.
        drain: ``await drain(partitions, within)`` before giving partitions up (a
            rebalance): waits until their records in flight are done (at most
            ``within`` seconds), writes a checkpoint (which calls the source's
            ``committed``), stops tracking them and returns their final positions.
        count: ``count(outcome, n)`` reports ``n`` things the source dealt with
            that are not records, such as ``"objects_quarantined"`` (an object
            set aside whole): the run report and the ``riprap_source_outcomes``
            metric show them by outcome, so nothing is left out silently (I7).
        policy_hooks: Hooks for policy events, so that retries the source's
            client library makes by itself (``riprap.policies.RetryScheduled``)
            reach the run report and the metrics with riprap's own.
        clock: The pipeline's clock (events are stamped with its ``monotonic()``).
        assigned: ``await assigned({partition: start})`` when partitions are
            given to the source (a rebalance), before any of their records is
            read; ``start`` is where the source would resume (``None``: no stored
            position). It restores state kept for them elsewhere (a changelog)
            and returns, per partition, a position the source must start at or
            after: records below it are done already.
        max_batch_bytes: A source that knows how many bytes it reads (and says
            so in ``SourceBatch.nbytes``) ends a batch once it holds this many,
            with at least one record in it; ``None``: no byte limit.
        identities: What the source's ``identities()`` said, per partition, in
            the checkpoint the run resumes from (empty without one): a source
            resuming a partition checks that its position still counts in
            the same thing (a file not replaced under its name), or finds
            where it now is (the letter a replay sent last).
    """

    pipeline: str
    positions: Mapping[str, int]
    drain: Callable[[Collection[str], float], Awaitable[Mapping[str, int]]] = _no_drain
    count: Callable[[str, int], None] = _no_count
    policy_hooks: tuple[Callable[[Any], None], ...] = ()
    clock: Clock | None = None
    assigned: Callable[[Mapping[str, int | None]], Awaitable[Mapping[str, int]]] = _no_assigned
    max_batch_bytes: int | None = None
    identities: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """Produces batches of records, one partition per batch, in position order.

    Contract: ``read`` returns at most ``max_records`` values of one partition,
    waits (cancellably, never blocking the loop) until some are available, and
    returns ``None`` once the source is exhausted. A batch's ``end`` is the
    position to resume from once all of its records are done; positions of one
    partition never go backwards.

    Optional: ``async def committed(self, positions)`` is called after every
    successful checkpoint with the positions it saved (a Kafka source commits
    them as the group's offsets); ``def lag(self) -> dict[str, int]`` reports
    records behind the end of each partition (a metric); ``def identities(self,
    positions) -> Mapping[str, str]`` says, per partition, what its position
    counts in at the ``positions`` being checkpointed (a file's fingerprint, the
    letter a replay sent last): it is saved with them (by backends that keep
    state) and handed back in ``SourceContext.identities``, so the source can
    refuse to resume in something else, or find where it stopped. It is called
    at every checkpoint, with no await around it: keep it cheap, and never
    change what it returned.
    """

    name: str

    async def open(self, context: SourceContext) -> None: ...

    async def read(self, max_records: int) -> SourceBatch | None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """Writes batches; a batch counts as done when ``write`` returns.

    Contract: when ``write`` returns, the batch is durable (or the sink has
    ``batch.ack.retain()``-ed it and will ``release()`` once it is). ``flush``
    makes everything buffered durable. ``idempotent`` says whether rewriting a
    replayed record is harmless (exactly-once effect, I2).

    Optional: ``def bind(self, context: SinkContext)`` is called when a run is
    created, before ``open`` (the pipeline's clock, in-flight bound and policy
    hooks). For a sink that holds records back across writes,
    ``def wake_at(self) -> float | None`` says when (on
    ``context.clock``'s monotonic time) the sink wants to write although no
    batch has come, and the runtime then calls ``write`` with an empty batch.
    While a partition is drained (a rebalance), such a sink's ``flush`` is
    called after each batch, from the task that calls ``write``.

    Optional: ``async def start_write(self, batch) -> Awaitable[None]`` starts
    a write and returns what completes once the batch is durable (raising what
    ``write`` would). The runtime then sends the next batches while earlier
    ones are acknowledged (up to four on their way, acks released in input
    order); when one fails, it and every batch after it are written again,
    in order, through ``write`` and the sink's policies, so the last copy of
    every record keeps input order. A sink with a breaker, a bulkhead,
    ``wake_at`` or tracing on writes one batch at a time.
    """

    name: str
    idempotent: bool

    async def open(self) -> None: ...

    async def write(self, batch: Batch) -> None: ...

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink learns, through its optional ``bind``, when a run is created.

    Attributes:
        pipeline: The pipeline's name.
        clock: The pipeline's clock; ``wake_at`` is read against its ``monotonic()``.
        batch_size: The pipeline's ``batch_size`` option.
        max_in_flight: The pipeline's ``max_in_flight`` option. Records a sink
            holds stay in flight, and the source reads only while a whole batch
            fits: a sink must not hold more than ``max_in_flight - batch_size``
            source records once ``write`` returns, or the run can stall for good.
            A held record keeps its whole source batch in flight, so a sink with
            ``wake_at`` is also flushed whenever the source waits for room.
        policy_hooks: Hooks for policy events, so that retries the sink's client
            library makes by itself (``riprap.policies.RetryScheduled``) reach
            the run report and the metrics with riprap's own.
    """

    pipeline: str
    clock: Clock
    batch_size: int = 1_000
    max_in_flight: int = 10_000
    policy_hooks: tuple[Callable[[Any], None], ...] = ()


def _ignore(count: int) -> None:
    """The default counting callback of a hand-made context: counts nothing."""


def _never() -> bool:
    """The default ``source_exhausted`` of a hand-made context."""
    return False


def _not_tracked(batch: Batch) -> None:
    """The default ``park``/``unpark`` of a hand-made context: no bound to watch."""


def _no_positions() -> Mapping[str, int]:
    """The default ``positions`` of a hand-made context: no partition is tracked."""
    return {}


def _no_saves() -> int:
    """The default ``checkpoints_saved`` of a hand-made context."""
    return 0


def _no_side_output(name: str) -> Emit:
    """The default ``side_output`` of a hand-made context: no output is wired."""
    raise ConfigError(f"side_output.{name}", "this stage context has no side outputs")


@dataclass(frozen=True, slots=True)
class StageContext:
    """What a custom stage may use while it runs (handed to its optional ``open``).

    Attributes:
        pipeline: The pipeline's name.
        clock: The pipeline's clock (event-time stages use wall time from it).
        dead_letter: ``dead_letter(batch, index, error, reason)`` sends the source
            record behind ``batch.items[index]`` to the dead-letter sink with
            ``reason`` (default: the error's). The record's ack is retained until
            the write is durable; the runtime writes after ``process`` returns.
            Without a dead-letter sink it stops the run, like any failing record.
        dropped: ``dropped(n)`` counts records the stage removed on purpose (a
            dedupe, a filter), so the run report accounts for them (I7).
        absorbed: ``absorbed(n)`` counts records folded into the stage's state
            (a window): done, reported as absorbed, and progress for the DLQ guard.
        source_exhausted: Whether the source has ended (in ``finish``: end of
            input rather than a graceful stop).
        count: ``count(outcome, n)`` reports ``n`` things the stage did that are
            neither records out nor dead letters (a quality gate's window let
            through by an operator, a stuck saga); the run report and the
            ``riprap_source_outcomes`` metric show them by outcome (I7).
        policy_hooks: Hooks for policy events of the stage's own policy stacks,
            so their retries reach the run report and the metrics.
        batch_size: The pipeline's ``batch_size`` option.
        max_in_flight: The pipeline's ``max_in_flight`` option (a stage that
            holds records back must hold fewer than this, or the run stalls).
        shelter: The run's :class:`~riprap.policies.Shelter`, for the stage's
            own policy stacks: the run closes it when its drain time is up, so
            a call that ignores cancellation cannot hold up a stop.
        side_output: ``side_output(name)`` is the emit of the side output
            ``name``, one the stage declares in its ``side_outputs`` (the
            pipeline wires each to a sink, see ``Pipeline.side_output``).
            Batches emitted there follow the rules of ``emit``: their acks
            cover their records, which are done once that sink is done.
        positions: ``positions()`` is the run's committable position per source
            partition right now. Read inside ``snapshot`` it gives exactly the
            positions of the checkpoint being cut, so a stage can save the
            state those positions imply (keyed state does, I3).
        checkpoints_saved: ``checkpoints_saved()`` is how many checkpoints the
            run has saved so far; once it has grown by two since a ``snapshot``,
            a checkpoint cut after that snapshot is durable (saves never overlap).
        state_log: The run's changelog for keyed state (``None``: the pipeline
            has none, and keyed state is saved in checkpoints);
            :class:`~riprap.state.KeyedState` uses it.
        park: ``park(batch)`` says the stage keeps ``batch`` (and its ack)
            until more input arrives, as a gate keeps an open window;
            ``unpark(batch)`` when it lets the batch go (emitted, dead-lettered
            or dropped). A run whose every record in flight is parked while the
            source waits for room can never move on: it stops with
            :class:`~riprap.StalledError` naming the stages instead of waiting
            forever.
    """

    pipeline: str
    clock: Clock
    dead_letter: Callable[[Batch, int, BaseException, str | None], None]
    dropped: Callable[[int], None] = _ignore
    absorbed: Callable[[int], None] = _ignore
    source_exhausted: Callable[[], bool] = _never
    count: Callable[[str, int], None] = _no_count
    policy_hooks: tuple[Callable[[Any], None], ...] = ()
    batch_size: int = 1_000
    max_in_flight: int = 10_000
    shelter: Shelter | None = None
    side_output: Callable[[str], Emit] = _no_side_output
    positions: Callable[[], Mapping[str, int]] = _no_positions
    checkpoints_saved: Callable[[], int] = _no_saves
    state_log: StateLog | None = None
    park: Callable[[Batch], None] = _not_tracked
    unpark: Callable[[Batch], None] = _not_tracked


@runtime_checkable
class Stage(Protocol):
    """A custom processing step that sees whole batches.

    ``process`` calls ``emit`` for its output batches (zero or more). Output
    batches must carry acks that cover the input (share ``batch.ack``, or
    ``retain`` it once per extra output); a stage that absorbs records into its
    state releases their ack and emits later results under acks of its own
    (``riprap.lowlevel.Ack(on_done)``); one that keeps batches until more input
    arrives (a window not yet full) says so with ``context.park``, so that a run
    it would hold forever stops with :class:`~riprap.StalledError` instead. A
    stage may define ``async def open(self,
    context: StageContext)``, called once before the first batch. ``snapshot``
    returns JSON-serialisable state saved in the same checkpoint as the source
    positions (I3); it is called with no await in between, so it must not await.
    It is encoded later, in a worker thread: the stage must never change what it
    returned (return a copy, or a :class:`~riprap.checkpoints.DeferredState`
    view when copying a large state would hold the event loop).

    Side outputs: a stage that emits elsewhere too (late records, rejects)
    names those outputs in a ``side_outputs`` tuple attribute and emits there
    through ``context.side_output(name)``; a pipeline that does not wire one
    of them to a sink is refused when it is built, so nothing emitted there
    is lost.
    """

    step_id: str

    async def process(self, batch: Batch, emit: Emit) -> None: ...

    async def finish(self, emit: Emit) -> None: ...

    def snapshot(self) -> Any: ...

    def restore(self, state: Any) -> None: ...
