"""What a keyed-state store is: the protocols the memory and SQLite stores implement.

A *store* is configuration (frozen, given to ``.map(state=...)`` or to a
:class:`~riprap.state.KeyedState`); opened for one step it gives the step's
*partitions*, one *backing* per source partition, which hold the state as of
the last checkpoint cut (see :mod:`riprap._runtime.keyed_state`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap._core.state_values import Entry


class Backing(Protocol):
    """One partition's store: the state at the last cut's position."""

    def read(self, token: str) -> tuple[str, float | None] | None: ...

    def apply(self, changes: Mapping[str, Entry], position: int, now: float) -> None: ...


class Partitions(Protocol):
    """Every partition store of one step."""

    def partition(self, name: str) -> Backing: ...

    def snapshot(self, now: float) -> dict[str, Any]: ...

    def commits(self) -> dict[str, int]: ...

    def confirmed(self, commits: Mapping[str, int]) -> None: ...

    def close(self) -> None: ...


class StateStore(Protocol):
    """Where a step keeps its keyed state: ``MemoryStore()`` or ``SqliteStore(directory)``."""

    @property
    def kind(self) -> str:
        """``"memory"`` or ``"sqlite"``: recorded in the checkpoint, checked on restore."""
        ...

    def open(self, *, pipeline: str, step_id: str, restored: Any) -> Partitions: ...
