"""Which partitions' positions a scrape shows: the ones that moved last, a bounded number.

A source over a prefix of S3 objects or a glob of files keeps a position for
every object or file it ever read, so ``riprap_position`` with one series per
partition would grow without end (100,000 of them: a 10 MB scrape taking half
a second of the event loop) and swamp Prometheus. A scrape shows at most
:data:`MAX_POSITION_SERIES`: every partition while there are that few (a Kafka
topic), else the ones whose positions moved most recently, as successive
scrapes saw them; ``riprap_partitions`` counts them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_POSITION_SERIES = 1_000
"""The most ``riprap_position`` series one pipeline shows."""


@final
class MovedLast:
    """Remembers, scrape to scrape, the order in which partitions' positions moved."""

    __slots__ = ("_moved", "_seen", "limit")

    def __init__(self, limit: int = MAX_POSITION_SERIES) -> None:
        self.limit = limit
        self._seen: dict[str, int] = {}  # each partition's position at the last scrape
        self._moved: dict[str, None] = {}  # the partitions, the one that moved last at the end

    def shown(self, positions: Mapping[str, int]) -> list[tuple[str, int]]:
        """The partitions a scrape of ``positions`` shows, with their positions, by name."""
        seen, moved = self._seen, self._moved
        for partition, position in positions.items():
            if seen.get(partition) != position:
                seen[partition] = position
                moved.pop(partition, None)
                moved[partition] = None
        if len(seen) > len(positions):  # partitions given up (a rebalance)
            for gone in [partition for partition in seen if partition not in positions]:
                del seen[gone]
                del moved[gone]
        last = list(moved)[-self.limit :] if len(moved) > self.limit else moved
        return sorted((partition, positions[partition]) for partition in last)
