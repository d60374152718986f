"""Keyed state held in memory and saved whole inside every checkpoint.

The simplest store: what the checkpoint holds for a step is exactly its state
at the checkpoint's positions, so a restore is a load and nothing on disk can
disagree with the checkpoint. Its cost is the whole state copied at every
checkpoint: for states that outgrow that, :class:`~riprap.state.SqliteStore`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from riprap._core.state_values import restored_partitions

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from riprap._core.state_values import Entry

KIND = "memory"


@final
@dataclass(frozen=True, slots=True)
class MemoryStore:
    """Keyed state in memory, saved whole with every checkpoint (the default store).

    .. versionadded:: 0.1
    """

    kind = KIND

    def open(self, *, pipeline: str, step_id: str, restored: Any) -> MemoryPartitions:
        """The step's partitions, as the restored checkpoint left them (``None``: none).

        Raises:
            StateStoreError: The checkpoint holds other state under the step, or
                keyed state of another store.
        """
        partitions = MemoryPartitions()
        for name, data in restored_partitions(KIND, f"of step {step_id!r}", restored).items():
            partitions.partition(name).load(data)
        return partitions


@final
class MemoryBacking:
    """One partition's state at the last checkpoint's position: token -> (JSON, expiry)."""

    __slots__ = ("data", "next_expiry")

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, float | None]] = {}
        self.next_expiry = math.inf
        """No value expires before this (wall seconds): :meth:`expire` scans only from then."""

    def load(self, data: Mapping[str, Sequence[Any]]) -> None:
        """Take the state saved in a checkpoint (or restored from a changelog)."""
        self.data = {token: (text, expires) for token, (text, expires) in data.items()}
        self.next_expiry = min(
            (e for _, e in self.data.values() if e is not None), default=math.inf
        )

    def read(self, token: str) -> tuple[str, float | None] | None:
        return self.data.get(token)

    def tokens(self, now: float) -> list[str]:
        return [t for t, (_, e) in self.data.items() if e is None or e > now]

    def apply(self, changes: Mapping[str, Entry], position: int, now: float) -> None:
        """Apply the last change of every key made below ``position``."""
        data = self.data
        for token, entry in changes.items():
            if entry is None:
                data.pop(token, None)
            else:
                data[token] = entry
                if entry[1] is not None and entry[1] < self.next_expiry:
                    self.next_expiry = entry[1]

    def expire(self, now: float) -> list[str]:
        """Drop the values expired at ``now``; their tokens (a scan only once one is due)."""
        if now < self.next_expiry:
            return []
        data = self.data
        expired = [t for t, (_, e) in data.items() if e is not None and e <= now]
        for token in expired:
            del data[token]
        self.next_expiry = min((e for _, e in data.values() if e is not None), default=math.inf)
        return expired

    def snapshot(self, now: float) -> dict[str, list[Any]]:
        """A copy for the checkpoint; expired values are dropped here and from the store."""
        self.data = {t: e for t, e in self.data.items() if e[1] is None or e[1] > now}
        return {t: [text, expires] for t, (text, expires) in self.data.items()}


@final
class MemoryPartitions:
    """Every partition of one step's memory store."""

    __slots__ = ("partitions",)

    def __init__(self) -> None:
        self.partitions: dict[str, MemoryBacking] = {}

    def partition(self, name: str) -> MemoryBacking:
        backing = self.partitions.get(name)
        if backing is None:
            backing = self.partitions[name] = MemoryBacking()
        return backing

    def snapshot(self, now: float) -> dict[str, Any]:
        """The whole state, per partition, for the checkpoint."""
        parts = {name: part for name, b in self.partitions.items() if (part := b.snapshot(now))}
        return {"store": KIND, "partitions": parts}

    def commits(self) -> dict[str, int]:
        """No commits: the checkpoint holds the whole state."""
        return {}

    def confirmed(self, commits: Mapping[str, int]) -> None:
        """Nothing to forget: the checkpoint holds the whole state."""

    def close(self) -> None:
        """Nothing to close."""
