"""A route: splits each batch by the branches its ``by`` picks, in a few passes per batch.

A route runs the user's ``by`` once per record and nothing else per record in
Python if it can: the names come from one ``map`` over the batch, and each
branch's records from two C-level passes per distinct name (``map(eq)``,
``compress``), for up to :data:`FEW` names. A batch with more names, or whose
``by`` returns several names for a record (predicates do), is grouped record
by record. Each branch gets a batch of its own sharing the ack (retained once
per extra branch); records no branch takes are counted as dropped or
dead-lettered.
"""

from __future__ import annotations

import reprlib
import time
from itertools import compress, repeat
from operator import eq
from typing import TYPE_CHECKING, Any, final

from riprap._core.errors import DataError
from riprap._core.records import Batch, IndexOrigin, Origin
from riprap.observability._report import StepCounters

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from riprap._core.records import SourceBatch, Where
    from riprap._core.steps import RouteStep
    from riprap._runtime.routing import Router

FEW = 4
"""Distinct names in a batch up to which each branch's records are found in a pass of their own."""

_FAILED = object()
"""Stands for the name of a record whose ``by`` raised (the router has it)."""


@final
class RouteRunner:
    """Splits batches by branch as a route's ``by`` picks; counts what it leaves out.

    Args:
        step: The route.
        branches: The branch names, in the order batches are handed out.
        router: Where records go whose ``by`` raised, or that no branch took.
    """

    __slots__ = ("_index", "_names", "_router", "counters", "step")

    def __init__(self, step: RouteStep, branches: Sequence[str], router: Router) -> None:
        self.step = step
        self.counters = StepCounters(step.step_id)
        self._router = router
        self._names = tuple(branches)
        self._index = {name: i for i, name in enumerate(branches)}

    async def split(self, batch: Batch) -> list[Batch | None]:
        """One batch per branch (``None`` where it takes nothing), the ack retained for each.

        Raises:
            PipelineError: ``by`` raised what stops the run, or a record no branch
                takes has no dead-letter store to go to (``on_unmatched="dlq"``).
        """
        started = time.perf_counter()
        counters = self.counters
        counters.records_in += len(batch.items)
        out: list[Batch | None] = [None] * len(self._names)
        names = self._pick_all(batch)
        left_out = self._group(batch, names, out)
        if left_out and self.step.on_unmatched == "drop":
            counters.dropped += len(left_out)
        elif left_out:
            for i in left_out:
                self._router.dead_letter_item(self.step.step_id, batch, i, self._unrouted(names[i]))
        await self._router.flush()
        taken = sum(1 for part in out if part is not None)
        counters.records_out += sum(len(part.items) for part in out if part is not None)
        counters.timed(started)
        if taken == 0:
            batch.ack.release()  # every record dropped or dead-lettered (their letters hold it)
        elif taken > 1:
            batch.ack.retain(taken - 1)
        return out

    def _pick_all(self, batch: Batch) -> list[Any]:
        """``by`` of every record, once each; a record whose ``by`` raised goes to the router."""
        step = self.step
        items = batch.items
        pick = step.pick if step.pick is not None else _by_predicates(step.predicates)
        names: list[Any] = []
        calls = map(pick, items)
        while True:
            try:
                names.extend(calls)  # keeps the names before a raise; the map goes on after it
                return names
            except Exception as error:
                i = len(names)
                self.counters.errors += 1
                self._router.handle(step.step_id, batch, i, items[i], error)
                names.append(_FAILED)

    def _group(self, batch: Batch, names: list[Any], out: list[Batch | None]) -> list[int]:
        """Fill ``out`` with each branch's batch; the indexes of the records no branch took."""
        try:
            distinct = dict.fromkeys(names)
        except TypeError:  # lists of names
            return self._group_each(batch, names, out)
        if len(distinct) > FEW or not all(
            name is None or name is _FAILED or name.__class__ is str for name in distinct
        ):
            return self._group_each(batch, names, out)
        items = batch.items
        index = self._index
        if len(distinct) == 1 and (k := index.get(next(iter(distinct)))) is not None:
            out[k] = Batch(items, batch.ack, batch.origin)  # all to one branch, as it is
            return []
        left_out: list[int] = []
        for name in distinct:
            if name is _FAILED:
                continue
            flags = list(map(eq, names, repeat(name)))
            k = index.get(name)
            if k is None:  # None, or a name that is no branch
                left_out += compress(range(len(names)), flags)
            else:
                origin = FlagsOrigin(batch.origin, flags)
                out[k] = Batch(list(compress(items, flags)), batch.ack, origin)
        return sorted(left_out)

    def _group_each(self, batch: Batch, names: list[Any], out: list[Batch | None]) -> list[int]:
        """Record by record: names may be lists, a record may go to several branches."""
        picked: list[list[int]] = [[] for _ in self._names]
        left_out: list[int] = []
        for i, name in enumerate(names):
            if name is not _FAILED and not self._take(i, name, picked):
                left_out.append(i)
        items = batch.items
        for k, indices in enumerate(picked):
            if indices:
                origin = IndexOrigin(batch.origin, indices)
                out[k] = Batch([items[i] for i in indices], batch.ack, origin)
        return left_out

    def _take(self, i: int, name: Any, picked: list[list[int]]) -> bool:
        """Add record ``i`` to each branch ``name`` names (once each); whether any took it.

        Names that are no branch are left out; a record that only such names
        (or ``None``, or nothing) pick is taken by no branch.
        """
        index = self._index
        if name is None or isinstance(name, str):
            several: Iterable[Any] = (name,)
        else:
            try:
                several = dict.fromkeys(name)
            except TypeError:  # neither a name nor names
                return False
        took = False
        for one in several:
            k = index.get(one) if isinstance(one, str) else None
            if k is not None:
                picked[k].append(i)
                took = True
        return took

    def _unrouted(self, name: Any) -> DataError:
        """The dead letter's error for a record no branch took, naming what ``by`` gave."""
        step, branches = self.step.step_id, ", ".join(self._names)
        if name is None or (isinstance(name, list | tuple | set) and not name):
            return DataError(f"route {step!r}: no branch takes the record", reason="unrouted")
        return DataError(
            f"route {step!r}: {reprlib.repr(name)} names no branch (branches: {branches})",
            reason="unrouted",
        )


def _by_predicates(predicates: Sequence[tuple[str, Callable[[Any], Any]]]) -> Callable[[Any], Any]:
    """A ``by`` that names every branch whose predicate holds."""

    def pick(value: Any) -> list[str]:
        return [name for name, holds in predicates if holds(value)]

    return pick


@final
class FlagsOrigin(Origin):
    """Item ``j`` came from the parent item of the ``j``-th true flag (a route's share).

    The indexes are worked out only when something asks (a dead letter, a
    keyed sink), so the batches of a route cost no per-record index.
    """

    __slots__ = ("_flags", "_indices", "parent")

    def __init__(self, parent: Origin | None, flags: list[bool]) -> None:
        self.parent = parent
        self._flags = flags
        self._indices: IndexOrigin | None = None

    def _resolved(self) -> IndexOrigin:
        if self._indices is None:
            indices = list(compress(range(len(self._flags)), self._flags))
            self._indices = IndexOrigin(self.parent, indices)
        return self._indices

    def locate(self, index: int) -> tuple[SourceBatch, int] | None:
        return self._resolved().locate(index)

    def locate_all(self, count: int) -> list[Where]:
        return self._resolved().locate_all(count)
