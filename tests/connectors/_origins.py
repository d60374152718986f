"""Origins like those the runtime builds, written against the public ``Origin`` protocol.

A sink maps a batch's items back to source records through ``Origin.locate_all``
alone, so its tests can hand it any origin: these stand in for what re-batching
(batches joined end to end) and a ``flat_map`` (several items of one record) make.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from riprap import SourceBatch
from riprap.lowlevel import Origin

if TYPE_CHECKING:
    from collections.abc import Sequence

Where = tuple[SourceBatch, int] | None
"""Where a batch item came from: a source batch and an index in it, or unknown."""


@final
class ListedOrigin(Origin):
    """Item ``i`` of the batch came from ``places[i]``."""

    __slots__ = ("places",)

    def __init__(self, places: Sequence[Where]) -> None:
        self.places = list(places)

    def locate(self, index: int) -> Where:
        """Where item ``index`` came from; ``None`` past the end."""
        return self.places[index] if 0 <= index < len(self.places) else None


def joined(*sources: SourceBatch) -> ListedOrigin:
    """The origin of one batch holding all of ``sources``' values end to end (re-batching)."""
    return ListedOrigin([(source, i) for source in sources for i in range(len(source))])


def repeated(source: SourceBatch, indices: Sequence[int]) -> ListedOrigin:
    """The origin of items from ``source``'s records ``indices`` (a ``flat_map``'s outputs)."""
    return ListedOrigin([(source, i) for i in indices])
