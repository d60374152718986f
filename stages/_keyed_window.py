"""A window stage's state kept as keyed state: per key its open windows, per partition its time.

Each source partition keeps its own time (the greatest event time absorbed
from it), so a window closes by the time of its partition, like a Kafka
Streams task's stream time, and the state moves with the partition (to a
worker, a group member, through a changelog). Results go out with the record
whose time closed them, and the windows they leave behind change under that
record's offset: a replay after a crash closes them again (I1, I3).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import math
from typing import TYPE_CHECKING, Any, Protocol, final

import orjson

from riprap import Batch, DataError
from riprap.lowlevel import Ack
from riprap.state import KeyedState, PartitionGivenUp

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap import SourceBatch, StageContext
    from riprap.lowlevel import Emit
    from riprap.state import StateStore

_TIME = "t"
"""The state key of a partition's time; window keys start with their type's letter."""

_Due = list[tuple[float, int, int, str]]
"""Per partition: ``(when, strict, seq, state key)``: look at the key once the watermark
reaches ``when`` (passes it, when ``strict``)."""


class Fold(Protocol):
    """How a window folds its values (an :class:`~riprap.stages.window.Aggregate`)."""

    @property
    def init(self) -> Callable[[], Any]: ...
    @property
    def add(self) -> Callable[[Any, Any], Any]: ...
    @property
    def result(self) -> Callable[[Any], Any]: ...
    @property
    def merge(self) -> Callable[[Any, Any], Any] | None: ...


class Owner(Protocol):
    """The :class:`~riprap.stages.window.Window` whose options and record rules apply."""

    @property
    def step_id(self) -> str: ...
    @property
    def window(self) -> object: ...
    @property
    def aggregate(self) -> Fold: ...
    @property
    def out_of_orderness(self) -> float: ...
    @property
    def allowed_lateness(self) -> float: ...
    @property
    def _counts(self) -> dict[str, int]: ...
    @property
    def _context(self) -> StageContext | None: ...

    def _event_time(self, value: Any, place: tuple[SourceBatch, int] | None) -> float: ...
    def _check_skew(self, t: float, watermark: float | None) -> None: ...
    def _key_of(self, value: Any, place: tuple[SourceBatch, int] | None) -> Any: ...
    def _late(self, batch: Batch, index: int, t: float, watermark: float | None) -> None: ...
    def _dead_letter(self, batch: Batch, index: int, error: DataError, reason: str) -> None: ...


def state_key(key: Any) -> str:
    """The text a window key is kept under (``t`` is the partition's time).

    Raises:
        DataError: The key is not JSON data (reason ``bad_window_key``).
    """
    if key.__class__ is str:
        return "s" + key
    if isinstance(key, int) and not isinstance(key, bool):
        return "i" + str(key)
    if isinstance(key, bytes):
        return "b" + base64.b64encode(key).decode()
    try:
        return "j" + orjson.dumps(key).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        raise DataError(
            f"window key {key!r} is neither str, bytes, int nor JSON data", reason="bad_window_key"
        ) from None


def window_key(text: str) -> Any:
    """The key :func:`state_key` made ``text`` of (JSON lists come back as tuples)."""
    kind, rest = text[0], text[1:]
    if kind == "s":
        return rest
    if kind == "i":
        return int(rest)
    if kind == "b":
        return base64.b64decode(rest)
    return _hashable(orjson.loads(rest))


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key


def _start(win: list[Any]) -> Any:
    return win[0]


@final
class KeyedWindows:
    """The ``store=`` side of :class:`~riprap.stages.window.Window`."""

    __slots__ = ("_due", "_last", "_seq", "_times", "keyed_state", "window")

    def __init__(self, window: Owner, store: StateStore) -> None:
        self.window = window
        self.keyed_state = KeyedState(store, on_load=self._forget)
        self._due: dict[str, _Due] = {}
        self._times: dict[str, float | None] = {}
        """Each partition's time as the state holds it (read once per run)."""
        self._last: dict[str, tuple[Batch, int]] = {}
        """A record of each partition seen: what :meth:`finish` reads its state through."""
        self._seq = itertools.count()

    def open(self, context: StageContext) -> None:
        self._due, self._times, self._last = {}, {}, {}
        self.keyed_state.open(context, self.window.step_id)

    def _forget(self, partition: str) -> None:
        """The partition's state was loaded anew or released: what was derived from it goes."""
        self._due.pop(partition, None)
        self._times.pop(partition, None)
        self._last.pop(partition, None)

    def watermark(self, partition: str) -> float | None:
        max_time = self._times.get(partition)
        return None if max_time is None else max_time - self.window.out_of_orderness

    def absorb(self, batch: Batch) -> tuple[list[Any], list[int]]:
        """Fold every record of ``batch``; the results it closed and, per result, its record."""
        window, keyed, seq = self.window, self.keyed_state, self._seq
        out: list[Any] = []
        indices: list[int] = []
        given_up = 0
        for i, value in enumerate(batch.items):
            place = batch.locate(i)
            if place is None:
                keyed.state(batch, i)  # raises, naming the problem
                continue
            partition = place[0].partition
            try:
                due = self._index(partition, batch, i)
            except PartitionGivenUp:  # its new owner processes it again
                given_up += 1
                continue
            watermark = self.watermark(partition)
            try:
                t = window._event_time(value, place)
                window._check_skew(t, watermark)
                key = state_key(window._key_of(value, place))
                state = keyed.state(batch, i, key)
                windows: list[list[Any]] = state.get([])
                fresh = self._fold(windows, t, value, watermark)
                if fresh is None:
                    window._late(batch, i, t, watermark)
                    continue
                state.set(windows)
            except DataError as error:
                window._dead_letter(batch, i, error, error.reason)
                continue
            for end in fresh:
                heapq.heappush(due, (end, 0, next(seq), key))
            window._counts["absorbed"] += 1
            max_time = self._times[partition]
            if max_time is None or t > max_time:
                keyed.state(batch, i, _TIME).set(t)
                self._times[partition] = t
            results = self._close(due, self.watermark(partition), batch, i)
            out.extend(results)
            indices.extend([i] * len(results))
        if given_up and window._context is not None:
            window._context.count("handed_over", given_up)
        return out, indices

    async def finish(self, emit: Emit, chunk: int) -> None:
        """End of input: every changed window of the partitions read, kept open."""
        results: list[Any] = []
        for batch, i in self._last.values():
            for key in self.keyed_state.keys(batch, i):
                if key == _TIME:
                    continue
                for start, end, acc, dirty in self.keyed_state.state(batch, i, key).get([]):
                    if dirty:
                        results.append(self._result(key, start, end, acc))
        for first in range(0, len(results), chunk):
            await emit(Batch(results[first : first + chunk], Ack(_nothing), None))

    def _index(self, partition: str, batch: Batch, index: int) -> _Due:
        """The partition's due windows, found in its state at its first record of the run."""
        self._last[partition] = (batch, index)
        due = self._due.get(partition)
        if due is not None:
            return due
        due = self._due[partition] = []
        keyed = self.keyed_state
        max_time: float | None = None
        for key in keyed.keys(batch, index):
            value = keyed.state(batch, index, key).get()
            if key == _TIME:
                max_time = value
            elif value:
                heapq.heappush(due, self._next(key, value))
        self._times[partition] = max_time
        return due

    def _next(self, key: str, windows: list[list[Any]]) -> tuple[float, int, int, str]:
        """When ``key`` is next due: its earliest result to emit or window to purge."""
        lateness = self.window.allowed_lateness
        when = min((w[1], 0) if w[3] else (w[1] + lateness, 1) for w in windows)
        return when[0], when[1], next(self._seq), key

    def _fold(
        self, windows: list[list[Any]], t: float, value: Any, watermark: float | None
    ) -> list[float] | None:
        """Add ``value`` to its windows; the ends of those that became dirty (``None``: late)."""
        window = self.window
        lateness, aggregate = window.allowed_lateness, window.aggregate

        def open_at(end: float) -> bool:
            return watermark is None or not watermark > end + lateness

        kind = window.window
        fresh: list[float] = []
        gap: float | None = getattr(kind, "gap", None)
        if gap is not None:
            touching = [w for w in windows if w[0] < t + gap and t < w[1] and open_at(w[1])]
            if not touching:
                if not open_at(t + gap):
                    return None
                windows.append([t, t + gap, aggregate.add(aggregate.init(), value), True])
                windows.sort(key=_start)
                return [t + gap]
            first, *others = sorted(touching, key=_start)
            merge = aggregate.merge
            assert merge is not None  # checked by Window
            for other in others:
                first[2] = merge(first[2], other[2])
                first[1] = max(first[1], other[1])
                windows.remove(other)
            first[0], first[1] = min(first[0], t), max(first[1], t + gap)
            first[2] = aggregate.add(first[2], value)
            first[3] = True
            windows.sort(key=_start)
            return [first[1]]
        size: float = getattr(kind, "size", 0.0)
        slide: float = getattr(kind, "slide", size)
        by_start = {w[0]: w for w in windows}
        start = math.floor(t / slide) * slide
        folded = False
        while start + size > t:
            end = start + size
            if open_at(end):
                win = by_start.get(start)
                if win is None:
                    win = by_start[start] = [start, end, aggregate.init(), False]
                    windows.append(win)
                win[2] = aggregate.add(win[2], value)
                if not win[3]:
                    win[3] = True
                    fresh.append(end)
                folded = True
            start -= slide
        if not folded:
            return None
        windows.sort(key=_start)
        return fresh

    def _close(self, due: _Due, watermark: float | None, batch: Batch, index: int) -> list[Any]:
        """Emit the windows the watermark reached, purge those past their lateness.

        Their state changes under the record at ``index``, which carries the results.
        """
        if watermark is None:
            return []
        keyed, lateness = self.keyed_state, self.window.allowed_lateness
        results: list[Any] = []
        while due and (due[0][0] < watermark or (due[0][0] == watermark and not due[0][1])):
            key = heapq.heappop(due)[3]
            state = keyed.state(batch, index, key)
            windows: list[list[Any]] | None = state.get()
            if not windows:
                continue
            kept: list[list[Any]] = []
            changed = False
            for win in windows:
                start, end, acc, dirty = win
                if dirty and end <= watermark:
                    results.append(self._result(key, start, end, acc))
                    win[3] = False
                    changed = True
                if watermark > end + lateness:
                    changed = True  # purged
                else:
                    kept.append(win)
            if changed:
                if kept:
                    state.set(kept)
                else:
                    state.delete()
            if kept:
                heapq.heappush(due, self._next(key, kept))
        return results

    def _result(self, key: str, start: Any, end: Any, acc: Any) -> dict[str, Any]:
        value = self.window.aggregate.result(acc)
        return {"key": window_key(key), "start": start, "end": end, "value": value}


def _nothing() -> None:
    """Results of the end of input wait for nothing: their windows stay in the state."""
