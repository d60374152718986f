"""What a source's positions count in, per partition: the bookkeeping behind ``identities()``.

A source notes an identity (a file's head digest, an object's ETag) where it
starts reading a partition, in a worker thread if that is where it reads;
the checkpoint takes :meth:`PartitionIdentities.snapshot` at every cut, so it
is a copy that never changes, and the same copy while nothing was noted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Mapping


@final
class PartitionIdentities:
    """Identities by partition, starting from those a checkpoint saved.

    .. versionadded:: 0.2
    """

    __slots__ = ("_changes", "_handed", "_known")

    def __init__(self, saved: Mapping[str, str] | None = None) -> None:
        self._known = dict(saved or {})
        self._changes = 0
        self._handed: tuple[int, Mapping[str, str]] = (-1, {})

    def get(self, partition: str) -> str | None:
        """The identity noted for ``partition``, or ``None``."""
        return self._known.get(partition)

    def note(self, partition: str, identity: str) -> None:
        """``partition``'s position now counts in ``identity``."""
        if self._known.get(partition) != identity:
            self._known[partition] = identity
            self._changes += 1

    def snapshot(self) -> Mapping[str, str]:
        """Every identity, as a mapping that is never changed afterwards."""
        changes, handed = self._handed
        if changes != self._changes:
            changes = self._changes  # read first: a note during the copy shows next time
            handed = dict(self._known)
            self._handed = (changes, handed)
        return handed
