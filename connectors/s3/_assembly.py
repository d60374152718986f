"""How the S3 sink groups records into objects: limits, age, and replays that line up.

Each source partition fills one object at a time. The object is *cut* (ready
to be written) when it holds ``max_records`` records, when the next record
would take its body past ``max_bytes``, once it is ``max_age`` seconds old,
when the sink holds as many source records as may be in flight, and on flush.

Count and size cuts fall on the same records in every run; the others do not,
so a replay after a crash could group records differently and write an
object that overlaps one already stored. To prevent that, each partition is
told, before its first record, what the bucket already holds from there on
(:mod:`._layout`):

* the *holder*, an object that began before the replay yet holds its first
  records (the checkpoint counts whole source batches, an object may end
  inside one): those records are stored already and are skipped;
* the objects beginning later: an object being filled is always cut before
  the first position of the next stored object, and one that begins where a
  stored object begins is cut where that one ends, so it is the same object
  under the same name and simply overwritten. A stored object whose name will
  not be written again (cut elsewhere this time, or its first record no longer
  arrives) is deleted before the object that takes over its records is
  written; if the process dies in between, its records are not done, so the
  next run replays them.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap import SourceBatch
    from riprap.lowlevel import Ack

    from ._layout import Position, Stored


@final
class OrderError(RuntimeError):
    """A partition's records reached the sink out of position order."""


@final
class Ready:
    """An object cut and waiting for its PUT; ``deletes`` go first."""

    __slots__ = ("acks", "chunks", "deletes", "key", "records")

    def __init__(
        self, key: str, chunks: list[bytes], acks: list[Ack], deletes: list[str], records: int
    ) -> None:
        self.key = key
        self.chunks = chunks
        self.acks = acks
        self.deletes = deletes
        self.records = records


@final
class _Part:
    """The object a partition is filling."""

    __slots__ = (
        "acks",
        "aligned",
        "chunks",
        "first",
        "last",
        "replaces",
        "size",
        "sources",
        "started",
        "stop",
    )

    def __init__(
        self,
        first: Position,
        started: float,
        size: int,
        replaces: list[Stored],
        aligned: Stored | None,
        stop: Position | None,
    ) -> None:
        self.first = first
        self.last = first
        self.started = started
        self.size = size
        self.chunks: list[bytes] = []
        self.acks: list[Ack] = []
        self.sources: dict[int, SourceBatch] = {}
        self.replaces = replaces
        self.aligned = aligned
        self.stop = stop


@final
class _Partition:
    __slots__ = ("holder_last", "part", "previous", "stored")

    def __init__(self, holder_last: Position | None, stored: deque[Stored]) -> None:
        self.holder_last = holder_last
        self.stored = stored
        self.previous: Position | None = None
        self.part: _Part | None = None


@final
class Assembler:
    """Groups each partition's records into objects (see the module docstring).

    Args:
        max_records: Records per object, or ``None``.
        max_bytes: Body bytes per object (``header`` included), or ``None``.
        max_age: Seconds from an object's first record to its cut, or ``None``.
        header: What every body starts with (a CSV header line).
        record_end: Bytes the body adds after each record's chunk (a newline).
        key: The object key of ``(partition, first, last)``.
    """

    def __init__(
        self,
        *,
        max_records: int | None,
        max_bytes: int | None,
        max_age: float | None,
        header: bytes,
        record_end: int = 0,
        key: Callable[[str, Position, Position], str],
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.header = header
        self.record_end = record_end
        self.key = key
        self.ready: deque[Ready] = deque()
        """Objects cut and not yet written, oldest first."""
        self.skipped = 0
        """Replayed records found already stored in a holder."""
        self._partitions: dict[str, _Partition] = {}

    def knows(self, partition: str) -> bool:
        """Whether ``partition`` has begun (:meth:`begin`)."""
        return partition in self._partitions

    def begin(self, partition: str, holder: Stored | None, stored: deque[Stored]) -> None:
        """Start ``partition`` with what the bucket holds from its first record on.

        ``stored`` (objects beginning at or after the first record, in order)
        is consumed from the left and may grow on the right as it is listed.
        """
        self._partitions[partition] = _Partition(holder.last if holder else None, stored)

    def place(self, partition: str, offsets: list[int]) -> list[Position]:
        """The positions the next records of ``partition`` get; nothing changes yet.

        Raises:
            OrderError: An offset is below the one before it.
        """
        previous = self._partitions[partition].previous
        positions: list[Position] = []
        for offset in offsets:
            if previous is None or offset > previous[0]:
                previous = (offset, 0)
            elif offset == previous[0]:
                previous = (offset, previous[1] + 1)
            else:
                raise OrderError(
                    f"partition {partition!r}: offset {offset} reached the sink after "
                    f"offset {previous[0]}; S3Sink needs each partition's records in "
                    "position order (a step reorders them across batches)"
                )
            positions.append(previous)
        return positions

    def add(
        self,
        partition: str,
        position: Position,
        chunk: bytes,
        ack: Ack,
        source: SourceBatch,
        now: float,
    ) -> None:
        """Add one record (positions from :meth:`place`, in order); may cut objects."""
        state = self._partitions[partition]
        state.previous = position
        if state.holder_last is not None:
            if position <= state.holder_last:
                self.skipped += 1
                return
            state.holder_last = None
        size = len(chunk) + self.record_end
        part = state.part
        if part is not None and (
            (part.stop is not None and position >= part.stop)
            or (self.max_bytes is not None and part.size + size > self.max_bytes)
        ):
            self._cut(partition, state)
            part = None
        if part is None:
            part = state.part = self._start(state, position, now)
        part.last = position
        part.chunks.append(chunk)
        part.size += size
        if not part.acks or part.acks[-1] is not ack:
            ack.retain()
            part.acks.append(ack)
        part.sources.setdefault(id(source), source)
        if (self.max_records is not None and len(part.chunks) >= self.max_records) or (
            part.aligned is not None and position >= part.aligned.last
        ):
            self._cut(partition, state)

    def cut_due(self, now: float) -> None:
        """Cut every object that is ``max_age`` old at ``now``."""
        if self.max_age is None:
            return
        for partition, state in self._partitions.items():
            # The same sum as wake_at's, so a wake-up at that deadline always cuts.
            if state.part is not None and state.part.started + self.max_age <= now:
                self._cut(partition, state)

    def cut_all(self) -> None:
        """Cut every object being filled."""
        for partition, state in self._partitions.items():
            if state.part is not None:
                self._cut(partition, state)

    def cut_oldest(self) -> None:
        """Cut the object whose first record came first."""
        filling = [(s.part.started, p, s) for p, s in self._partitions.items() if s.part]
        if filling:
            _, partition, state = min(filling, key=lambda entry: entry[0])
            self._cut(partition, state)

    def held(self) -> int:
        """Source records of every source batch that objects being filled hold a part of."""
        return sum(
            len(source.values)
            for state in self._partitions.values()
            if state.part is not None
            for source in state.part.sources.values()
        )

    def filling(self) -> int:
        """Records in objects being filled."""
        return sum(len(s.part.chunks) for s in self._partitions.values() if s.part is not None)

    def wake_at(self) -> float | None:
        """When the oldest object being filled reaches ``max_age`` (``None``: never)."""
        if self.max_age is None:
            return None
        starts = [s.part.started for s in self._partitions.values() if s.part is not None]
        return min(starts) + self.max_age if starts else None

    def _start(self, state: _Partition, position: Position, now: float) -> _Part:
        """A new object beginning at ``position``, lined up with what is stored."""
        stored = state.stored
        replaces: list[Stored] = []
        while stored and stored[0].first < position:
            replaces.append(stored.popleft())  # its first record did not come again
        aligned = stored.popleft() if stored and stored[0].first == position else None
        while stored and stored[0].first == position:
            replaces.append(stored.popleft())  # the same records under another name
        stop = stored[0].first if stored else None
        return _Part(position, now, len(self.header), replaces, aligned, stop)

    def _cut(self, partition: str, state: _Partition) -> None:
        part = state.part
        assert part is not None
        state.part = None
        key = self.key(partition, part.first, part.last)
        deletes = [stored.key for stored in part.replaces]
        if part.aligned is not None and part.aligned.key != key:
            deletes.append(part.aligned.key)
        self.ready.append(Ready(key, part.chunks, part.acks, deletes, len(part.chunks)))
