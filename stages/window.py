"""Event-time windows keyed by record key: tumbling, sliding and session.

A :class:`Window` stage groups records by key and event time and folds each
group with an :class:`Aggregate` (or a plain ``reduce``). It emits one value
per window, ``{"key": ..., "start": ..., "end": ..., "value": ...}``.

Time
    The watermark is the greatest event time seen so far minus
    ``out_of_orderness`` (bounded out-of-orderness); it is stage-wide, not per
    partition. A window ``[start, end)`` emits its result once the watermark
    reaches ``end``, and stays open for late updates while the watermark is at
    most ``end + allowed_lateness``; an update in that time emits the updated
    result again (same key and start: an upserting sink keeps the last one).
    Once the watermark passes ``end + allowed_lateness`` the window is purged.
    A record all of whose windows are purged is *late*: it goes to the
    dead-letter queue with reason ``"late"``, to the side output ``late``
    (``on_late="output"``, wired with ``Pipeline.side_output("late", sink)``),
    or to an ``on_late`` callback.

Bounded event time
    With ``max_skew`` set, a record whose event time is more than
    ``max_skew`` seconds ahead of the watermark (or, with
    ``skew_from="wall"``, of the pipeline clock's wall time) is a
    :class:`~riprap.DataError` with reason ``"timestamp_out_of_range"``: it is
    dead-lettered and never moves the watermark, so one bad clock cannot make
    every later record late. Measured from the watermark, the skew must
    allow for ``out_of_orderness`` and for how fast event time moves between
    records; the first record of a stage without state sets the watermark
    unchecked (use ``skew_from="wall"`` when event times are wall-clock times).

Completion (I1, I3)
    Absorbing a record into window state makes it done: the input batch's ack
    is released as soon as the batch is absorbed, because the state that now
    holds the record is saved in the same checkpoint as the positions. An
    emitted result stays in the state (*pending*) until the batch carrying it
    is done downstream, under an ack of the stage's own; after a restart the
    pending results are emitted again, first. A checkpoint can still put a
    partition's position before records already absorbed (an earlier record
    of the same source batch was still on its way to the dead-letter queue),
    so the state also keeps the offsets absorbed since the start of the latest
    source batch of each partition, and a replayed record already absorbed is
    skipped instead of counted twice. That bookkeeping relies on records of a
    partition reaching the stage in order, which the pipeline guarantees, and
    on knowing each record's source position (it is lost behind a ``.batch``
    step).

End of input
    :meth:`Window.finish` emits every window that has changed since it last
    emitted, as if the watermark had jumped to infinity, but keeps the windows
    until the real watermark closes them: a run that is stopped and resumed,
    or a source that later grows, updates those results instead of starting
    the windows over.

State (keys, accumulators, results) must be JSON data: it is saved in
checkpoints. Keys that are tuples come back as tuples; other values come back
as JSON gives them (lists for tuples).

Keyed state (``store=``)
    With a :class:`~riprap.state.MemoryStore` or
    :class:`~riprap.state.SqliteStore` the windows are keyed state, kept per
    source partition, and each partition has its own time and watermark
    (the greatest event time absorbed from it): the state scales out with
    its partitions (a changelog, ``--workers``). A result goes out with the
    record that closed its window, so a replay closes it again; the state
    keeps no pending results and no absorbed offsets. Give the records of a
    key one partition (a Kafka key): a key read from two partitions has
    windows in each.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_right
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, final

import orjson

from riprap import Batch, ConfigError, DataError, Record
from riprap.lowlevel import Ack, DropsOrigin, IndexOrigin

from ._keyed_window import KeyedWindows

if TYPE_CHECKING:
    from riprap import SourceBatch, StageContext
    from riprap.lowlevel import Emit
    from riprap.state import KeyedState, StateStore

__all__ = (
    "Aggregate",
    "LateHandler",
    "Session",
    "Sliding",
    "Tumbling",
    "Window",
    "WindowKind",
    "WindowStatistics",
    "session",
    "sliding",
    "tumbling",
)

_ValueT = TypeVar("_ValueT")
"""The type of the values a window folds."""
_AccT = TypeVar("_AccT")
"""The type of a window's accumulator (JSON data: it is checkpointed)."""
_ResultT = TypeVar("_ResultT")
"""The type of a window's result."""

LateHandler = Callable[[Record], None]

_STATE_VERSION = 1
"""Version of the snapshot format."""
_EMIT_CHUNK = 1000
"""Most results the stage puts in one output batch."""


def _positive(option: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(option, f"must be a positive number of seconds, got {value!r}")
    if math.isinf(value):
        raise ConfigError(option, f"must be finite, got {value!r}")


@final
@dataclass(frozen=True, slots=True)
class Tumbling:
    """Fixed windows ``[k * size, (k + 1) * size)``; each record is in exactly one.

    .. versionadded:: 0.1
    """

    size: float

    def __post_init__(self) -> None:
        _positive("window.size", self.size)


@final
@dataclass(frozen=True, slots=True)
class Sliding:
    """Windows of ``size`` starting every ``slide``; a record is in ``size / slide`` of them.

    .. versionadded:: 0.1
    """

    size: float
    slide: float

    def __post_init__(self) -> None:
        _positive("window.size", self.size)
        _positive("window.slide", self.slide)
        if self.slide > self.size:
            raise ConfigError(
                "window.slide",
                f"must not exceed size ({self.size!r}), got {self.slide!r}: records between "
                "windows would belong to none",
            )


@final
@dataclass(frozen=True, slots=True)
class Session:
    """Windows of activity per key that close after ``gap`` seconds without a record.

    A record at ``t`` opens ``[t, t + gap)``; overlapping sessions of a key merge.

    .. versionadded:: 0.1
    """

    gap: float

    def __post_init__(self) -> None:
        _positive("window.gap", self.gap)


WindowKind = Tumbling | Sliding | Session


def tumbling(size: float) -> Tumbling:
    """Tumbling windows of ``size`` seconds.

    .. versionadded:: 0.1
    """
    return Tumbling(size)


def sliding(size: float, slide: float) -> Sliding:
    """Sliding windows of ``size`` seconds, one starting every ``slide`` seconds.

    .. versionadded:: 0.1
    """
    return Sliding(size, slide)


def session(gap: float) -> Session:
    """Session windows that close after ``gap`` seconds of inactivity of a key.

    .. versionadded:: 0.1
    """
    return Session(gap)


def _identity(acc: Any) -> Any:
    return acc


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Aggregate(Generic[_ValueT, _AccT, _ResultT]):
    """How a window folds its values.

    Attributes:
        init: A fresh accumulator (called once per window).
        add: ``add(acc, value) -> acc``; may update ``acc`` in place and return it.
        result: ``result(acc)``, the emitted ``value`` (default: the accumulator).
        merge: ``merge(a, b) -> acc``; needed by session windows, which merge.

    .. versionadded:: 0.1
    """

    init: Callable[[], _AccT]
    add: Callable[[_AccT, _ValueT], _AccT]
    result: Callable[[_AccT], _ResultT] = field(default=_identity)
    merge: Callable[[_AccT, _AccT], _AccT] | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class WindowStatistics:
    """Counters of one window stage.

    Attributes:
        absorbed: Records folded into windows.
        late: Records behind the allowed lateness (dead-lettered or handed to ``on_late``).
        skipped: Replayed records already absorbed before a restart.
        out_of_range: Records whose event time was beyond ``max_skew``.
        open_windows: Windows held in the state (``None`` with a store: it holds them).
        pending: Results emitted and not yet done downstream.
        watermark: The current watermark (``None`` before the first record,
            and with a store: each partition has its own).
    """

    absorbed: int
    late: int
    skipped: int
    open_windows: int | None
    pending: int
    watermark: float | None
    out_of_range: int = 0


@final
class _Win:
    """One window's state; ``live`` turns false when it is purged or merged away."""

    __slots__ = ("acc", "dirty", "end", "key", "live", "start")

    def __init__(self, key: Any, start: float, end: float, acc: Any, *, dirty: bool) -> None:
        self.key = key
        self.start = start
        self.end = end
        self.acc = acc
        self.dirty = dirty
        self.live = True


@final
class _Absorbed:
    """Offsets absorbed per partition, as sorted ``[start, end)`` ranges.

    Only offsets since the start of a partition's latest source batch are kept:
    everything before it is done and will never be replayed.
    """

    __slots__ = ("ranges",)

    def __init__(self, ranges: dict[str, list[list[int]]] | None = None) -> None:
        self.ranges: dict[str, list[list[int]]] = ranges or {}

    def prune(self, partition: str, below: int) -> None:
        ranges = self.ranges.get(partition)
        if not ranges:
            return
        kept = [[max(a, below), b] for a, b in ranges if b > below]
        if kept:
            self.ranges[partition] = kept
        else:
            del self.ranges[partition]

    def contains(self, partition: str, offset: int) -> bool:
        ranges = self.ranges.get(partition)
        if not ranges:
            return False
        i = bisect_right(ranges, offset, key=_first) - 1
        return i >= 0 and ranges[i][0] <= offset < ranges[i][1]

    def add(self, partition: str, offset: int) -> None:
        ranges = self.ranges.setdefault(partition, [])
        if ranges and ranges[-1][1] == offset:  # the usual case: the next offset in order
            ranges[-1][1] += 1
            return
        i = bisect_right(ranges, offset, key=_first)
        ranges.insert(i, [offset, offset + 1])
        # Join with the neighbours when they touch.
        if i + 1 < len(ranges) and ranges[i + 1][0] == offset + 1:
            ranges[i][1] = ranges.pop(i + 1)[1]
        if i > 0 and ranges[i - 1][1] == offset:
            ranges[i - 1][1] = ranges.pop(i)[1]


def _first(pair: list[int]) -> int:
    return pair[0]


def _hashable(key: Any) -> Any:
    """A key read back from JSON: lists become tuples so it can key a dict again."""
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key


def _json_copy(value: Any, what: str) -> Any:
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise TypeError(f"{what} must be JSON data to be checkpointed: {exc}") from None


_Heap = list[tuple[float, int, _Win, float]]
_Pending = dict[tuple[Any, Any], tuple[int, dict[str, Any]]]


@final
class Window:
    """An event-time window stage (see the module docstring for the rules).

    Args:
        step_id: Names the step in logs, metrics, dead letters and checkpoints.
        window: :func:`tumbling`, :func:`sliding` or :func:`session`.
        key: ``key(value)``, the grouping key (hashable; JSON data when
            checkpointed); ``None`` uses the record key.
        time: ``time(value)``, the event time in seconds; ``None`` uses the
            record's timestamp. A record without one is dead-lettered
            (reason ``no_event_time``).
        aggregate: How values are folded.
        reduce: Instead of ``aggregate``: ``reduce(acc, value) -> acc`` ...
        initial: ... starting from a copy of ``initial`` in each window.
        out_of_orderness: Seconds by which the watermark trails the greatest
            event time seen.
        allowed_lateness: Seconds a window stays open for late updates after
            the watermark has passed its end.
        on_late: ``"dlq"`` dead-letters late records with reason ``late``;
            ``"output"`` emits them (their values, as they came) to the side
            output ``late_output``, which the pipeline must wire to a sink
            (they are done once that sink has them); a callable receives each
            late :class:`~riprap.Record` instead (the record then counts as
            done, like a filtered one).
        late_output: The side output's name for ``on_late="output"``.
        max_skew: Seconds an event time may be ahead of the watermark (or of
            wall time); beyond it the record is dead-lettered with reason
            ``timestamp_out_of_range``. ``None`` (the default) accepts any time.
        skew_from: ``"watermark"`` or ``"wall"`` (the pipeline clock's
            ``time()``): what ``max_skew`` is measured from.
        store: Keep the windows as keyed state in this store, per source
            partition, each with its own watermark (see the module's docs).

    Raises:
        ConfigError: An option is missing or impossible; session windows need
            ``aggregate`` with ``merge``.

    ``key``, ``time`` and the aggregate functions may raise
    :class:`~riprap.DataError` for one bad record (it is dead-lettered); any
    other exception stops the run.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        step_id: str,
        *,
        window: WindowKind,
        key: Callable[[Any], Hashable] | None = None,
        time: Callable[[Any], float] | None = None,
        aggregate: Aggregate[Any, Any, Any] | None = None,
        reduce: Callable[[Any, Any], Any] | None = None,
        initial: Any = None,
        out_of_orderness: float = 0.0,
        allowed_lateness: float = 0.0,
        on_late: Literal["dlq", "output"] | LateHandler = "dlq",
        late_output: str = "late",
        max_skew: float | None = None,
        skew_from: Literal["watermark", "wall"] = "watermark",
        store: StateStore | None = None,
    ) -> None:
        self.step_id = step_id
        self.window = window
        self.aggregate = _aggregate(window, aggregate, reduce, initial)
        self._key = key
        self._time = time
        self.out_of_orderness = _not_negative("out_of_orderness", out_of_orderness)
        self.allowed_lateness = _not_negative("allowed_lateness", allowed_lateness)
        if on_late not in ("dlq", "output") and not callable(on_late):
            raise ConfigError("on_late", f"must be 'dlq', 'output' or a callable, got {on_late!r}")
        self.on_late = on_late
        self.side_outputs: tuple[str, ...] = (late_output,) if on_late == "output" else ()
        """The side output late records go to (with ``on_late="output"``)."""
        self._late_emit: Emit | None = None
        if max_skew is not None:
            _positive("max_skew", max_skew)
        if skew_from not in ("watermark", "wall"):
            raise ConfigError("skew_from", f"must be 'watermark' or 'wall', got {skew_from!r}")
        self.max_skew = max_skew
        self.skew_from = skew_from
        self._context: StageContext | None = None
        if store is not None and not isinstance(getattr(store, "kind", None), str):
            raise ConfigError(
                "Window.store", f"must be MemoryStore() or SqliteStore(directory), got {store!r}"
            )
        self._keyed = None if store is None else KeyedWindows(self, store)
        self.keyed_state: KeyedState | None = (
            None if self._keyed is None else self._keyed.keyed_state
        )
        """The windows as keyed state, when a store keeps them (``store=``)."""
        self._reset()

    def _reset(self) -> None:
        self._max_time: float | None = None
        self._aligned: dict[tuple[Any, float], _Win] = {}
        self._sessions: dict[Any, list[_Win]] = {}
        self._due: _Heap = []
        self._expiry: _Heap = []
        self._seq = itertools.count()
        self._updated: list[_Win] = []
        self._pending: _Pending = {}
        self._replay: list[tuple[tuple[Any, Any], int]] = []
        self._absorbed = _Absorbed()
        self._counts = {"absorbed": 0, "late": 0, "skipped": 0, "out_of_range": 0}
        self._late_now: list[int] = []

    # -- the Stage protocol -------------------------------------------------------

    async def open(self, context: StageContext) -> None:
        """Keep the context: late records are dead-lettered or sent to a side output through it."""
        self._context = context
        if self.side_outputs:
            self._late_emit = context.side_output(self.side_outputs[0])
        if self._keyed is not None:
            self._keyed.open(context)

    async def process(self, batch: Batch, emit: Emit) -> None:
        """Absorb a batch, release its ack, then emit the results that became due."""
        if self._keyed is not None:
            await self._process_keyed(self._keyed, batch, emit)
            return
        before = self._counts["absorbed"] + self._counts["skipped"]
        self._absorb(batch)
        if self._context is not None:  # the report and the DLQ guard see absorbed records
            self._context.absorbed(self._counts["absorbed"] + self._counts["skipped"] - before)
        results = self._collect(self.watermark)
        late = self._late_batch(batch)  # retains the ack for the side output
        batch.ack.release()  # absorbed (or dead-lettered, which retained the ack)
        await self._emit(results, emit)
        if late is not None:
            assert self._late_emit is not None
            await self._late_emit(late)

    async def _process_keyed(self, keyed: KeyedWindows, batch: Batch, emit: Emit) -> None:
        """:meth:`process` with a store: results go out with the records that closed them."""
        before = self._counts["absorbed"]
        out, indices = keyed.absorb(batch)
        if self._context is not None:
            self._context.absorbed(self._counts["absorbed"] - before)
        late = self._late_batch(batch)  # retains the ack for the side output
        if not out:
            batch.ack.release()
        else:
            firsts = range(0, len(out), _EMIT_CHUNK)
            batch.ack.retain(len(firsts) - 1)  # each output batch holds the input
            for first in firsts:
                last = first + _EMIT_CHUNK
                origin = IndexOrigin(batch.origin, indices[first:last])
                await emit(Batch(out[first:last], batch.ack, origin))
        if late is not None:
            assert self._late_emit is not None
            await self._late_emit(late)

    async def finish(self, emit: Emit) -> None:
        """End of input: emit every changed window (see the module docstring)."""
        if self._keyed is not None:
            await self._keyed.finish(emit, _EMIT_CHUNK)
            return
        await self._emit(self._collect_all(), emit)

    def snapshot(self) -> Any:
        """The state as JSON data: a copy, so later updates cannot leak into a checkpoint.

        With a store, what its keyed state hands the checkpoint.
        """
        if self.keyed_state is not None:
            return self.keyed_state.snapshot()
        windows = [
            [w.key, w.start, w.end, w.acc, w.dirty]
            for w in itertools.chain(self._aligned.values(), *self._sessions.values())
        ]
        raw = {
            "version": _STATE_VERSION,
            "max_time": self._max_time,
            "windows": windows,
            "pending": [result for _, result in self._pending.values()],
            "absorbed": self._absorbed.ranges,
        }
        return dict(_json_copy(raw, f"the state of window step {self.step_id!r}"))

    def restore(self, state: Any) -> None:
        """Load a snapshot; pending results are emitted again before anything new.

        Raises:
            ValueError: The snapshot has an unknown format version.
        """
        if self.keyed_state is not None:
            self.keyed_state.restore(state)
            return
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"window step {self.step_id!r}: unknown state {state.get('version')!r}"
            )
        self._reset()
        self._max_time = state["max_time"]
        for key, start, end, acc, dirty in state["windows"]:
            self._add_window(_Win(_hashable(key), start, end, acc, dirty=dirty))
        for result in state["pending"]:
            wid = (_hashable(result["key"]), result["start"])
            seq = next(self._seq)
            self._pending[wid] = (seq, result)
            self._replay.append((wid, seq))
        self._absorbed = _Absorbed(
            {p: [list(r) for r in rs] for p, rs in state["absorbed"].items()}
        )

    # -- introspection ------------------------------------------------------------

    @property
    def watermark(self) -> float | None:
        """Greatest event time seen minus ``out_of_orderness``; ``None`` before any record."""
        return None if self._max_time is None else self._max_time - self.out_of_orderness

    def statistics(self) -> WindowStatistics:
        """Counters and sizes right now."""
        return WindowStatistics(
            absorbed=self._counts["absorbed"],
            late=self._counts["late"],
            skipped=self._counts["skipped"],
            out_of_range=self._counts["out_of_range"],
            open_windows=None
            if self._keyed is not None
            else len(self._aligned) + sum(map(len, self._sessions.values())),
            pending=len(self._pending),
            watermark=self.watermark,
        )

    # -- absorbing ------------------------------------------------------------------

    def _absorb(self, batch: Batch) -> None:
        """Fold every record of the batch into its windows (no await: one consistent step)."""
        places = [batch.locate(i) for i in range(len(batch.items))]
        self._prune(places)
        absorbed = self._absorbed
        for i, value in enumerate(batch.items):
            place = places[i]
            if place is not None:
                source, j = place
                partition, offset = source.partition, source.offset_of(j)
                if absorbed.contains(partition, offset):
                    self._counts["skipped"] += 1
                    continue
            try:
                t = self._event_time(value, place)
                self._check_skew(t, self.watermark)
                key = self._key_of(value, place)
                folded = self._fold(key, t, value)
            except DataError as error:
                self._dead_letter(batch, i, error, error.reason)
                continue
            if not folded:
                self._late(batch, i, t, self.watermark)
                continue
            self._counts["absorbed"] += 1
            if self._max_time is None or t > self._max_time:
                self._max_time = t  # only absorbed records move the watermark
            if place is not None:
                absorbed.add(partition, offset)

    def _prune(self, places: list[tuple[SourceBatch, int] | None]) -> None:
        """Forget absorbed offsets before each partition's current source batch (done)."""
        starts: dict[str, int] = {}
        for place in places:
            if place is not None:
                source = place[0]
                starts[source.partition] = min(
                    starts.get(source.partition, source.start), source.start
                )
        for partition, start in starts.items():
            self._absorbed.prune(partition, start)

    def _event_time(self, value: Any, place: tuple[SourceBatch, int] | None) -> float:
        if self._time is not None:
            t: Any = self._time(value)
        else:
            t = place[0].record(place[1], value).timestamp if place is not None else None
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise DataError(f"no usable event time: {t!r}", reason="no_event_time")
        return t

    def _check_skew(self, t: float, watermark: float | None) -> None:
        """Refuse an event time too far ahead: it would move the watermark for good."""
        if self.max_skew is None:
            return
        if self.skew_from == "wall":
            if self._context is None:
                raise RuntimeError(f"window step {self.step_id!r} was not opened")
            reference: float | None = self._context.clock.time()
        else:
            reference = watermark
        if reference is None or t <= reference + self.max_skew:
            return
        self._counts["out_of_range"] += 1
        raise DataError(
            f"event time {t!r} is more than max_skew {self.max_skew!r} s ahead of the"
            f" {self.skew_from} ({reference!r})",
            reason="timestamp_out_of_range",
        )

    def _key_of(self, value: Any, place: tuple[SourceBatch, int] | None) -> Any:
        if self._key is not None:
            return self._key(value)
        return place[0].record(place[1], value).key if place is not None else None

    def _expired(self, end: float) -> bool:
        watermark = self.watermark
        return watermark is not None and watermark > end + self.allowed_lateness

    def _fold(self, key: Any, t: float, value: Any) -> bool:
        """Add ``value`` to its windows; ``False`` when all of them are closed (late)."""
        if isinstance(self.window, Session):
            return self._fold_session(key, t, value, self.window.gap)
        size = self.window.size
        slide = self.window.slide if isinstance(self.window, Sliding) else size
        start = math.floor(t / slide) * slide
        folded = False
        while start + size > t:
            end = start + size
            if not self._expired(end):
                win = self._aligned.get((key, start))
                if win is None:
                    win = _Win(key, start, end, self.aggregate.init(), dirty=True)
                    self._add_window(win)
                self._update(win, value)
                folded = True
            start -= slide
        return folded

    def _fold_session(self, key: Any, t: float, value: Any, gap: float) -> bool:
        sessions = self._sessions.get(key, [])
        touching = [
            w for w in sessions if w.start < t + gap and t < w.end and not self._expired(w.end)
        ]
        if not touching:
            if self._expired(t + gap):
                return False
            win = _Win(key, t, t + gap, self.aggregate.init(), dirty=True)
            self._add_window(win)
            self._update(win, value)
            return True
        win, *others = touching
        merge = self.aggregate.merge
        assert merge is not None  # checked in __init__
        for other in others:  # sorted by start: ``win`` is the earliest
            win.acc = merge(win.acc, other.acc)
            win.end = max(win.end, other.end)
            other.live = False
            sessions.remove(other)
        old_end = win.end
        win.start, win.end = min(win.start, t), max(win.end, t + gap)
        sessions.sort(key=_start)
        if others or win.end != old_end:
            self._schedule(win)
        self._update(win, value)
        return True

    def _update(self, win: _Win, value: Any) -> None:
        win.acc = self.aggregate.add(win.acc, value)
        win.dirty = True
        watermark = self.watermark
        if watermark is not None and win.end <= watermark:
            self._updated.append(win)  # already emitted once: emit the update with this batch

    def _add_window(self, win: _Win) -> None:
        if isinstance(self.window, Session):
            sessions = self._sessions.setdefault(win.key, [])
            sessions.append(win)
            sessions.sort(key=_start)
        else:
            self._aligned[(win.key, win.start)] = win
        self._schedule(win)

    def _schedule(self, win: _Win) -> None:
        """Queue the window for its emission and its purge (older entries go stale)."""
        heapq.heappush(self._due, (win.end, next(self._seq), win, win.end))
        expiry = win.end + self.allowed_lateness
        heapq.heappush(self._expiry, (expiry, next(self._seq), win, win.end))

    def _late(self, batch: Batch, index: int, t: float, watermark: float | None) -> None:
        self._counts["late"] += 1
        if self.on_late == "output":
            if self._late_emit is None:
                raise RuntimeError(f"window step {self.step_id!r} was not opened; no side output")
            self._late_now.append(index)
        elif self.on_late == "dlq":
            error = DataError(
                f"event time {t!r} is too late: its windows closed at watermark {watermark!r}"
                f" (out_of_orderness {self.out_of_orderness!r}, allowed_lateness "
                f"{self.allowed_lateness!r})",
                reason="late",
            )
            self._dead_letter(batch, index, error, error.reason)
        else:
            self.on_late(batch.record(index))

    def _late_batch(self, batch: Batch) -> Batch | None:
        """The late records of ``batch`` for the side output, under its ack (retained once)."""
        late, self._late_now = self._late_now, []
        if not late:
            return None
        batch.ack.retain()
        chosen = set(late)
        items: list[Any] = []
        drops: list[int] = []
        for i, value in enumerate(batch.items):
            if i in chosen:
                items.append(value)
            else:
                drops.append(len(items))
        return Batch(items, batch.ack, DropsOrigin(batch.origin, drops))

    def _dead_letter(self, batch: Batch, index: int, error: DataError, reason: str) -> None:
        if self._context is None:
            raise RuntimeError(f"window step {self.step_id!r} was not opened; cannot dead-letter")
        self._context.dead_letter(batch, index, error, reason)

    # -- emitting ---------------------------------------------------------------

    def _collect(self, watermark: float | None) -> list[tuple[tuple[Any, Any], int]]:
        """Results that are due, as pending entries (restored ones first); purge closed windows."""
        out, self._replay = self._replay, []
        if watermark is None:
            return out
        due = self._due
        ready: list[_Win] = []
        while due and due[0][0] <= watermark:
            _, _, win, end = heapq.heappop(due)
            if win.live and win.end == end:
                ready.append(win)
        ready.extend(self._updated)
        self._updated = []
        out.extend(self._pend(win) for win in ready if win.live and win.dirty)
        self._purge(watermark)
        return out

    def _collect_all(self) -> list[tuple[tuple[Any, Any], int]]:
        """End of input: every changed window, kept open (its due entry stays queued)."""
        out, self._replay = self._replay, []
        self._updated = []
        windows = itertools.chain(self._aligned.values(), *self._sessions.values())
        out.extend(self._pend(win) for win in list(windows) if win.dirty)
        return out

    def _pend(self, win: _Win) -> tuple[tuple[Any, Any], int]:
        win.dirty = False
        value = _json_copy(
            self.aggregate.result(win.acc), f"a result of window step {self.step_id!r}"
        )
        result = {"key": win.key, "start": win.start, "end": win.end, "value": value}
        wid = (win.key, win.start)
        seq = next(self._seq)
        self._pending[wid] = (seq, result)
        return wid, seq

    def _purge(self, watermark: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < watermark:
            _, _, win, end = heapq.heappop(expiry)
            if not win.live or win.end != end:
                continue
            win.live = False
            if isinstance(self.window, Session):
                sessions = self._sessions[win.key]
                sessions.remove(win)
                if not sessions:
                    del self._sessions[win.key]
            else:
                del self._aligned[(win.key, win.start)]

    async def _emit(self, entries: list[tuple[tuple[Any, Any], int]], emit: Emit) -> None:
        """Emit pending results under acks of our own that drop them from pending when done."""
        pending = self._pending
        live = [(wid, seq) for wid, seq in entries if wid in pending and pending[wid][0] == seq]
        for i in range(0, len(live), _EMIT_CHUNK):
            chunk = live[i : i + _EMIT_CHUNK]
            items = [pending[wid][1] for wid, _ in chunk]
            await emit(Batch(items, Ack(self._on_done(chunk)), None))

    def _on_done(self, chunk: list[tuple[tuple[Any, Any], int]]) -> Callable[[], None]:
        pending = self._pending

        def done() -> None:
            for wid, seq in chunk:
                current = pending.get(wid)
                if current is not None and current[0] == seq:  # not superseded by an update
                    del pending[wid]

        return done


def _start(win: _Win) -> float:
    return win.start


def _not_negative(option: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(option, f"must be a finite number of seconds >= 0, got {value!r}")
    return value


def _aggregate(
    window: WindowKind,
    aggregate: Aggregate[Any, Any, Any] | None,
    reduce: Callable[[Any, Any], Any] | None,
    initial: Any,
) -> Aggregate[Any, Any, Any]:
    """The aggregate to use, from ``aggregate`` or ``reduce`` + ``initial``."""
    if not isinstance(window, Tumbling | Sliding | Session):
        raise ConfigError("window", f"expected tumbling(), sliding() or session(), got {window!r}")
    if (aggregate is None) == (reduce is None):
        raise ConfigError("aggregate", "give exactly one of aggregate= or reduce=")
    if aggregate is None:
        assert reduce is not None
        frozen = orjson.dumps(initial)  # a fresh copy per window; also checks it is JSON

        def init() -> Any:
            return orjson.loads(frozen)

        aggregate = Aggregate(init=init, add=reduce)
    if isinstance(window, Session) and aggregate.merge is None:
        raise ConfigError(
            "aggregate",
            "session windows merge: use aggregate=Aggregate(..., merge=fn) instead of reduce=",
        )
    return aggregate
