"""What streamed changes and snapshot rows weigh, and how many to fetch, for the bound in bytes.

A change is weighed by its pgoutput message (the bytes the server sent for
it, every column value included); a snapshot row by its column texts. How
many rows the next fetch asks for follows the heaviest row seen lately, so
that one fetch stays about one batch's worth of bytes; a fetch that still
weighs more is cut, and its rest handed out by the next reads.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

PROBE = 16
"""Messages the first fetch asks for while nothing has been weighed yet."""


def sizes_of(rows: Sequence[Any]) -> list[int]:
    """Each peeked row's pgoutput message size (``lsn, xid, data`` rows)."""
    return [len(row[2]) for row in rows]


def text_sizes(rows: Sequence[Sequence[str | None]]) -> list[int]:
    """Each snapshot row's weight: its column texts' lengths, and one a column."""
    return [sum(1 if text is None else len(text) + 1 for text in row) for row in rows]


@final
class FetchSizer:
    """Sizes fetches from the heaviest row seen, forgetting a quarter of it per fetch.

    ``measure`` weighs fetched rows: WAL messages (the default) or snapshot rows.
    """

    __slots__ = ("_heaviest", "limit", "measure")

    def __init__(
        self, limit: int | None, measure: Callable[[Sequence[Any]], list[int]] = sizes_of
    ) -> None:
        self.limit = limit
        self.measure = measure
        self._heaviest = 0

    def size(self, max_records: int) -> int:
        """Rows the next fetch asks for: at most ``max_records``, at least one."""
        limit = self.limit
        if limit is None:
            return max_records
        if not self._heaviest:
            return min(max_records, PROBE)
        return max(1, min(max_records, limit // self._heaviest))

    def weigh(self, rows: Sequence[Any]) -> list[int]:
        """Each fetched row's weight; the heaviest is remembered for the next fetch."""
        sizes = self.measure(rows)
        if sizes:
            self._heaviest = max(max(sizes), self._heaviest * 3 // 4)
        return sizes

    def cut(self, sizes: Sequence[int]) -> tuple[int, int]:
        """How many of the rows weighing ``sizes`` one batch takes, and their bytes.

        A batch ends with the row that brings it to the limit (at least one row).
        """
        sums = list(accumulate(sizes))
        if self.limit is None or sums[-1] <= self.limit:
            return len(sums), sums[-1]
        count = min(len(sums), bisect_left(sums, self.limit) + 1)
        return count, sums[count - 1]
