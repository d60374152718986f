"""What a quality gate remembers across restarts: closed windows whose records may come again.

A closed window's records stay in flight until the sink (or the dead-letter
sink) has them, so a checkpoint can put a partition's position inside a window
the gate already judged. After a restart those records are replayed; the gate
must give them the verdict they had (pass them again, dead-letter them again)
instead of starting a new window with them, or windows would shift with every
restart and a bad window split by one could pass. A :class:`Decision` is kept
until every record of its window is done and no replay of it can come.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from riprap import Batch
from riprap.lowlevel import Ack, DropsOrigin

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ("Decision", "Decisions", "subset")


@final
class Decision:
    """The verdict on one closed window and where its records lie, per partition.

    Attributes:
        index: The window's number.
        action: ``"passed"``, ``"released"`` (breached, let through by an
            operator) or ``"quarantined"``.
        ranges: Per partition, the ``[first, last]`` source offsets of the window.
        outstanding: Batches of the window emitted and not yet done.
        waiting: Partitions whose replayed records may still arrive (after a restore).
    """

    __slots__ = ("action", "index", "outstanding", "ranges", "waiting")

    def __init__(
        self, index: int, action: str, ranges: dict[str, list[int]], waiting: Iterable[str] = ()
    ) -> None:
        self.index = index
        self.action = action
        self.ranges = ranges
        self.outstanding = 0
        self.waiting = set(waiting)

    def covers(self, partition: str, offset: int) -> bool:
        """Whether the source record at ``partition``/``offset`` belongs to this window."""
        bounds = self.ranges.get(partition)
        return bounds is not None and bounds[0] <= offset <= bounds[1]

    @property
    def settled(self) -> bool:
        """Every record is done and none can be replayed in this run: it can be forgotten."""
        return self.outstanding == 0 and not self.waiting


@final
class Decisions:
    """The decisions still needed, by window index (bounded by the records in flight)."""

    __slots__ = ("_by_index",)

    def __init__(self) -> None:
        self._by_index: dict[int, Decision] = {}

    def __bool__(self) -> bool:
        return bool(self._by_index)

    def __iter__(self) -> Iterator[Decision]:
        return iter(list(self._by_index.values()))

    def add(self, decision: Decision) -> None:
        """Remember a verdict until its window's records are done."""
        self._by_index[decision.index] = decision

    def find(self, partition: str, offset: int) -> Decision | None:
        """The decided window the source record belongs to, if one is remembered."""
        for decision in self._by_index.values():
            if decision.covers(partition, offset):
                return decision
        return None

    def beyond(self, partition: str) -> None:
        """A record past every decided window of ``partition`` arrived: no replay of it follows."""
        for decision in self:
            if partition in decision.waiting:
                decision.waiting.discard(partition)
                self._forget_if_settled(decision)

    def track(self, decision: Decision, part: Batch) -> Batch:
        """``part`` under an ack of its own that tells the decision when the part is done."""
        decision.outstanding += 1
        inner = part.ack

        def done() -> None:
            decision.outstanding -= 1
            self._forget_if_settled(decision)
            inner.release()

        return Batch(part.items, Ack(done), part.origin)

    def _forget_if_settled(self, decision: Decision) -> None:
        if decision.settled and self._by_index.get(decision.index) is decision:
            del self._by_index[decision.index]

    def to_json(self) -> list[list[Any]]:
        """The decisions as JSON data, for the checkpoint."""
        return [
            [d.index, d.action, {p: list(r) for p, r in d.ranges.items()}]
            for d in self._by_index.values()
        ]

    @classmethod
    def from_json(cls, data: list[list[Any]]) -> Decisions:
        """Restored decisions: each waits for its replayed records in every partition."""
        decisions = cls()
        for index, action, ranges in data:
            copied = {p: [int(r[0]), int(r[1])] for p, r in ranges.items()}
            decisions.add(Decision(int(index), str(action), copied, waiting=copied))
        return decisions


def subset(batch: Batch, indexes: list[int]) -> Batch:
    """The items of ``batch`` at ``indexes`` (ascending), sharing its ack and origin."""
    keep = set(indexes)
    drops: list[int] = []
    kept = 0
    for i in range(len(batch.items)):
        if i in keep:
            kept += 1
        else:
            drops.append(kept)
    origin = None if batch.origin is None else DropsOrigin(batch.origin, drops)
    return Batch([batch.items[i] for i in indexes], batch.ack, origin)
