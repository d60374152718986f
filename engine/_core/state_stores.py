"""What a keyed-state store is: the protocols the memory and SQLite stores implement.

A *store* is configuration (frozen, given to ``.map(state=...)`` or to a
:class:`~riprap.state.KeyedState`); opened for one step it gives the step's
*partitions*, one *backing* per source partition, which hold the state as of
the last checkpoint cut (see :mod:`riprap._runtime.keyed_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap._core.state_values import Entry


class Backing(Protocol):
    """One partition's store: the state at the last cut's position."""

    def read(self, token: str) -> tuple[str, float | None] | None: ...

    def tokens(self, now: float) -> list[str]:
        """The tokens with a value not expired at ``now``."""
        ...

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


@dataclass(frozen=True, slots=True)
class RestoredState:
    """What a changelog holds for one source partition: its values and the position they imply.

    Attributes:
        position: The source position of the last complete commit read (``None``:
            none). Every record below it is done.
        values: Per step, per key token: ``(JSON text, expiry or None)``; when not
            ``complete``, the changes since the offset asked for, ``None`` for a delete.
        offset: The log's offset just past the last complete commit read (``None``:
            none), from which a later restore of a local copy reads on.
        complete: Whether ``values`` is the whole state (else changes to apply).
    """

    position: int | None
    values: Mapping[str, Mapping[str, tuple[str, float | None] | None]]
    offset: int | None = None
    complete: bool = True


@runtime_checkable
class Changelog(Protocol):
    """Where the changes of a pipeline's keyed state are logged, so another process can take over.

    One changelog serves every keyed-state step of a pipeline: a commit for
    source partition P writes each step's changes of P and then one mark of
    P's position, so after any crash all steps agree with one position.
    :class:`~riprap.connectors.kafka.KafkaChangelog` is the one riprap ships.

    Attributes:
        accept_behind: Whether a partition whose last commit is behind where its
            source resumes (the group was moved on, or the log was deleted) starts
            there with the state it has, instead of refusing to run.

    .. versionadded:: 0.4
    """

    accept_behind: bool

    async def open(self, pipeline: str) -> None:
        """Connect; called once before the run's first restore."""
        ...

    async def restore(self, partition: str, since: int | None = None) -> RestoredState:
        """Read what is logged for source ``partition`` up to its last complete commit.

        With ``since`` (the ``offset`` of an earlier restore or flush), the
        changes after it, if the log still holds them all; else the whole state.
        """
        ...

    async def write(
        self, partition: str, changes: Mapping[str, Mapping[str, Entry]], position: int
    ) -> None:
        """Log each step's changes of ``partition`` (step -> token -> entry), then its position.

        May buffer: the commit is durable once :meth:`flush` returns.
        """
        ...

    async def flush(self) -> Mapping[str, int]:
        """Make everything written so far durable; raises if any of it failed.

        Returns, per partition written, the log's offset just past its mark.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; what is not flushed is not committed."""
        ...


class StateLog(Protocol):
    """The run's side of a changelog, as keyed state sees it (``StageContext.state_log``)."""

    def attach(self, step_id: str, owner: Any) -> None: ...

    def require(self, step_id: str, partition: str) -> None: ...

    def stage(self, step_id: str, partition: str, changes: Mapping[str, Entry]) -> None: ...
