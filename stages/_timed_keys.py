"""Keys with the time each was let through, oldest first, frozen for a checkpoint in O(1).

A :class:`Dedupe` may remember millions of keys. Copying them on the event loop
at every checkpoint held it for seconds, so the keys live in copy-on-write
levels instead: frozen levels that never change again, under one live level
that takes every change. A level holds the entries added while it was live,
in the order they came, and tombstones for the keys it removed from the
levels below. :meth:`TimedKeys.freeze` closes the live level and returns a
:class:`FrozenKeys` view of the frozen ones: no copy, so a checkpoint cut
costs the same for ten keys or ten million.

The view lists its keys in a worker thread, when the checkpoint is encoded:
:meth:`FrozenKeys.visible` filters each level against the keys of the
levels above it in slices of C code. When the levels have grown many, or
their changes large against the bottom level, the view also folds them into
one dict (:meth:`FrozenKeys.merged`) and the next :meth:`TimedKeys.freeze`
puts that dict in place of the levels it came from: lookups stay a few dict
probes, and the cost of a merge (a dict of every key) is paid every few
checkpoints, not at each. Memory: while a view is kept, the levels it refers
to stay alive next to the current ones and, after a merge, next to the merged
dict (the key table up to about three times; the keys themselves are shared).
Replaced levels are emptied by a later view in the worker thread
(:meth:`FrozenKeys.dispose`), so that freeing them never holds the loop.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, deque
from itertools import compress, islice, repeat, starmap
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Iterator

SLICE = 5_000
"""Entries handled per C call in a worker thread, so that it shares the GIL often."""

MAX_LEVELS = 16
"""Frozen levels kept before they are merged on the spot (views that were never encoded)."""

COMPACT_LEVELS = 4
"""Frozen levels above which a view asks to be merged when it is encoded."""

COMPACT_SHARE = 0.25
"""Changes above the bottom level, as a share of it, above which a view asks to be merged."""


@final
class _Level:
    """Entries added while the level was live, and keys it removed from the levels below."""

    __slots__ = ("entries", "removed")

    def __init__(self, entries: dict[str, float], removed: set[str]) -> None:
        self.entries = entries
        self.removed = removed


@final
class FrozenKeys:
    """The keys at a cut: frozen levels that nobody changes any more.

    Its methods only read frozen levels and publish a result with one
    reference assignment, so a worker thread may call them while the owner's
    event loop goes on.
    """

    __slots__ = ("_merged", "_retired", "compact", "levels")

    def __init__(
        self, levels: tuple[_Level, ...], *, compact: bool, retired: list[_Level] | None = None
    ) -> None:
        self.levels = levels
        self.compact = compact
        """Whether the levels are worth merging (:meth:`merged`) when the view is encoded."""
        self._merged: dict[str, float] | None = None
        self._retired = retired if retired is not None else []

    def dispose(self) -> None:
        """Empty, in slices, the levels the owner has replaced and nothing else refers to.

        A dict of a million keys freed at once holds the GIL for tens of
        milliseconds, wherever that happens; emptied here, in the worker
        thread, it costs the loop nothing. A level still referred to (by a
        view a checkpoint still holds) is left for a later call.
        """
        retired = self._retired
        for level in list(retired):
            # References: the retired list, the copy, the loop variable, the call's argument.
            if sys.getrefcount(level) != 4:
                continue
            entries, removed = level.entries, level.removed
            # Each: the level's attribute, the local name, the call's argument.
            if sys.getrefcount(entries) != 3 or sys.getrefcount(removed) != 3:
                continue
            _empty(entries.popitem, len(entries))
            _empty(removed.pop, len(removed))
            retired.remove(level)

    def visible(self, exclude: Collection[str] = ()) -> tuple[list[str], list[float]]:
        """The keys at the cut, oldest first, and their times, leaving out ``exclude``.

        Filtered in slices by C code (``map``, ``compress``): no Python call
        and no object per key.
        """
        if self._merged is not None:
            return _unshadowed((_Level(self._merged, set()),), exclude)
        return _unshadowed(self.levels, exclude)

    def merged(self) -> dict[str, float]:
        """Every key at the cut with its time, oldest first, in one dict (built once, in slices)."""
        merged = self._merged
        if merged is None:
            keys, times = _unshadowed(self.levels, ())
            merged = {}
            key_iter, time_iter = iter(keys), iter(times)
            for _ in range(0, len(keys), SLICE):
                merged.update(zip(islice(key_iter, SLICE), islice(time_iter, SLICE), strict=True))
            self._merged = merged  # one reference assignment: atomic for the loop's reader
        return merged

    def ready(self) -> dict[str, float] | None:
        """The merged dict if :meth:`merged` has finished, else ``None``."""
        return self._merged


def _unshadowed(
    levels: tuple[_Level, ...], exclude: Collection[str]
) -> tuple[list[str], list[float]]:
    """The entries of ``levels`` no level above shadows, bottom level first, minus ``exclude``.

    ``top`` maps each key of the levels above the bottom one (and of
    ``exclude``) to the highest level that holds it: level ``i``'s entry for a
    key is kept when that is ``i`` itself (or the key is not there at all).
    Every step is a C call over at most :data:`SLICE` keys.
    """
    top: dict[str, int] = {}
    for index in range(1, len(levels)):
        level = levels[index]
        _mark(top, level.entries, index)
        _mark(top, level.removed, index)
    _mark(top, exclude, len(levels))
    keys: list[str] = []
    times: list[float] = []
    for index, level in enumerate(levels):
        _keep(level.entries, top, index, keys, times)
    return keys, times


def _mark(top: dict[str, int], keys: Collection[str], index: int) -> None:
    """Record ``index`` as the highest level holding each of ``keys``, in slices."""
    key_iter = iter(keys)
    for _ in range(0, len(keys), SLICE):
        top.update(zip(islice(key_iter, SLICE), repeat(index)))


def _keep(
    entries: dict[str, float], top: dict[str, int], index: int, keys: list[str], times: list[float]
) -> None:
    """Append the entries of level ``index`` that ``top`` does not place higher, in slices."""
    key_iter, time_iter = iter(entries), iter(entries.values())
    highest, here = top.get, index.__eq__
    for _ in range(0, len(entries), SLICE):
        some_keys = list(islice(key_iter, SLICE))
        some_times = list(islice(time_iter, SLICE))
        if top:
            keep = list(map(here, map(highest, some_keys, repeat(index))))
            keys.extend(compress(some_keys, keep))
            times.extend(compress(some_times, keep))
        else:
            keys += some_keys
            times += some_times


def _empty(pop: Callable[[], object], size: int) -> None:
    """Call ``pop`` ``size`` times, a slice of C calls at a time."""
    for start in range(0, size, SLICE):
        deque(starmap(pop, repeat((), min(SLICE, size - start))), maxlen=0)


def _merge(levels: tuple[_Level, ...]) -> dict[str, float]:
    """The levels as one dict, at once (only for views that were never encoded)."""
    return FrozenKeys(levels, compact=True).merged()


@final
class TimedKeys:
    """A map of key to time in insertion order, with an O(1) :meth:`freeze`.

    ``add`` needs the key absent (``discard`` it first); ``pop_oldest`` and
    ``oldest`` follow insertion order, like an ``OrderedDict`` used as a queue.
    """

    __slots__ = (
        "_above",
        "_cursor",
        "_floor",
        "_frozen",
        "_head",
        "_live",
        "_lookup",
        "_removed",
        "_retired",
        "_size",
        "_view",
        "_walked",
    )

    def __init__(self, items: Iterable[tuple[str, float]] = ()) -> None:
        base = dict(items)  # a plain dict: faster to list than an OrderedDict
        self._frozen: list[_Level] = [_Level(base, set())] if base else []
        self._live: OrderedDict[str, float] = OrderedDict()
        self._removed: set[str] = set()
        self._size = len(base)
        self._view: FrozenKeys | None = None
        self._retired: list[_Level] = []
        """Levels replaced by a merge, emptied by a view in the worker thread (see ``dispose``)."""
        self._floor = 0
        """The lowest frozen level that may still hold a visible entry."""
        self._cursor: Iterator[tuple[str, float]] | None = None
        self._head: tuple[str, float] | None = None
        self._lookup: tuple[tuple[dict[str, float], set[str]], ...] = ()
        """The frozen levels' entries and tombstones, top level first (what lookups walk)."""
        self._relink()
        self._above: tuple[tuple[dict[str, float], set[str]], ...] = ()
        """The frozen levels above the cursor's, top first (set with the cursor)."""
        self._walked = 0
        """Entries of the last cut the cursor has moved past since: the merged dict's prefix
        that is gone."""

    def __len__(self) -> int:
        return self._size

    def get(self, key: str) -> float | None:
        """The time ``key`` was let through, or ``None``."""
        at = self._live.get(key)
        if at is not None or key in self._removed:
            return at
        for entries, removed in self._lookup:
            at = entries.get(key)
            if at is not None or key in removed:
                return at
        return None

    def add(self, key: str, at: float) -> int:
        """Remember ``key`` (absent now) as the newest entry; return how many are remembered."""
        self._live[key] = at
        self._size += 1
        return self._size

    def discard(self, key: str) -> None:
        """Forget ``key`` if it is remembered."""
        if self._live.pop(key, None) is not None:
            self._size -= 1
        elif key not in self._removed and self.get(key) is not None:
            self._removed.add(key)
            self._size -= 1

    def oldest(self) -> tuple[str, float] | None:
        """The oldest entry, or ``None`` when empty."""
        if self._floor < len(self._frozen):
            head = self._head
            if head is None or not self._visible(head[0]):
                head = self._advance()
            if head is not None:
                return head
        return next(iter(self._live.items()), None)

    def pop_oldest(self) -> tuple[str, float] | None:
        """Forget the oldest entry and return it (``None`` when empty)."""
        if self._floor < len(self._frozen):
            head = self._head
            if head is None or not self._visible(head[0]):
                head = self._advance()
            if head is not None:
                self._removed.add(head[0])
                self._head = None
                self._walked += 1  # it was visible, so part of the last cut
                self._size -= 1
                return head
        if not self._live:
            return None
        self._size -= 1
        return self._live.popitem(last=False)

    def _visible(self, key: str) -> bool:
        """Whether the cursor's entry for ``key`` is still there (nothing above has ``key``)."""
        return not (key in self._live or key in self._removed or self._shadowed(key))

    def _advance(self) -> tuple[str, float] | None:
        """Move the cursor to the oldest visible entry of the frozen levels, if any is left."""
        if self._head is not None:
            self._pass(in_cut=not self._shadowed(self._head[0]))
        frozen, live, removed = self._frozen, self._live, self._removed
        while self._floor < len(frozen):
            if self._cursor is None:
                self._cursor = iter(frozen[self._floor].entries.items())
                self._above = self._lookup[: len(frozen) - 1 - self._floor]
            above = self._above
            for head in self._cursor:  # inlined checks: this runs once per evicted key
                key = head[0]
                shadowed = False
                for entries, gone in above:
                    if key in entries or key in gone:
                        shadowed = True
                        break
                if not (shadowed or key in live or key in removed):
                    self._head = head
                    return head
                self._walked += not shadowed
            self._floor, self._cursor = self._floor + 1, None
        return None

    def freeze(self) -> FrozenKeys:
        """The keys as they are now, as a view that later changes never reach; O(1)."""
        self._install()
        if self._live or self._removed:
            self._frozen.append(_Level(self._live, self._removed))
            self._live, self._removed = OrderedDict(), set()
        if len(self._frozen) > MAX_LEVELS:
            self._retired += self._frozen
            self._frozen = [_Level(_merge(tuple(self._frozen)), set())]
            self._floor, self._cursor, self._head = 0, None, None
        self._walked = 0
        self._relink()
        self._above = self._lookup[: len(self._frozen) - 1 - self._floor]
        view = self._view = FrozenKeys(
            tuple(self._frozen), compact=self._compact_due(), retired=self._retired
        )
        return view

    def _compact_due(self) -> bool:
        """Whether the frozen levels are many, or their changes large, against the bottom one."""
        frozen = self._frozen
        if len(frozen) > COMPACT_LEVELS:
            return True
        changes = sum(len(level.entries) + len(level.removed) for level in frozen[1:])
        return changes > COMPACT_SHARE * len(frozen[0].entries) if frozen else False

    def _shadowed(self, key: str) -> bool:
        """Whether a frozen level above the cursor's holds ``key``: the cursor's entry for it
        is not part of the last cut."""
        return any(key in entries or key in removed for entries, removed in self._above)

    def _relink(self) -> None:
        """Recompute :attr:`_lookup` after the frozen levels changed."""
        self._lookup = tuple((level.entries, level.removed) for level in reversed(self._frozen))

    def _pass(self, *, in_cut: bool) -> None:
        """The cursor moves past its head; count it if the last cut held it (see ``_walked``)."""
        self._head = None
        if in_cut:
            self._walked += 1

    def _install(self) -> None:
        """Put the last view's merged dict, if ready, in place of the levels it came from."""
        view, self._view = self._view, None
        merged = view.ready() if view is not None else None
        if view is None or merged is None or not view.levels:
            return
        if self._frozen[-1] is not view.levels[-1]:
            return  # already replaced by an on-the-spot merge
        self._retired += self._frozen
        self._frozen = [_Level(merged, set())]  # the view covered every frozen level
        # The merged dict is the last cut in order; the cursor has since walked past its
        # first `_walked` entries: skip them in C rather than look at each again.
        cursor = iter(merged.items())
        next(islice(cursor, self._walked, self._walked), None)
        self._floor, self._cursor, self._head = 0, cursor, None
