"""The async face of a checkpoint backend whose storage calls block (files, SQLite).

Such a backend writes its work as plain blocking methods; this base class runs
each one in a worker thread, so the event loop never waits on a disk. The
snapshot is encoded in the same worker thread, so the loop never waits on the
encoding of a large state either: the cut was taken on the loop, and what it
refers to no longer changes (see :class:`~riprap.checkpoints.DeferredState`),
so the bytes are still a consistent cut (I3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import anyio.to_thread

from riprap.checkpoints._memory import encode

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap.checkpoints._integrity import CheckpointStatus
    from riprap.checkpoints._snapshot import Checkpoint, Claim


async def encode_in_thread(checkpoint: Checkpoint) -> bytes:
    """:func:`~riprap.checkpoints.encode` in a worker thread: what an async backend calls.

    Raises:
        CheckpointError: The operator state is not JSON-serialisable.
    """
    return await anyio.to_thread.run_sync(encode, checkpoint)


class ThreadedCheckpoints(ABC):
    """A :class:`~riprap.checkpoints.CheckpointBackend` built from blocking methods.

    Subclasses implement ``_claim_sync``, ``_save_sync``, ``_load_sync``,
    ``_close_sync`` and, for ``riprap checkpoint``, ``_pipelines_sync``,
    ``_status_sync`` and ``_overwrite_sync``. Each runs in a worker thread, and
    calls from several tasks may overlap, so a subclass guards its own shared state.
    """

    __slots__ = ()

    async def claim(self, pipeline: str, owner: str) -> Claim:
        """Take the next epoch of ``pipeline`` for ``owner``; return it with the latest snapshot."""
        return await anyio.to_thread.run_sync(self._claim_sync, pipeline, owner)

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` atomically and durably if its writer still holds the claim."""
        await anyio.to_thread.run_sync(self._encode_and_save, checkpoint)

    def _encode_and_save(self, checkpoint: Checkpoint) -> None:
        """Encode and store in one hop to the worker thread."""
        self._save_sync(checkpoint, encode(checkpoint))

    async def load(self, pipeline: str) -> Checkpoint | None:
        """The latest snapshot of ``pipeline``, or ``None``."""
        return await anyio.to_thread.run_sync(self._load_sync, pipeline)

    async def aclose(self) -> None:
        """Release what the backend holds open; idempotent."""
        await anyio.to_thread.run_sync(self._close_sync)

    async def pipelines(self) -> list[str]:
        """The pipelines with a claim, a snapshot or a recorded generation here, sorted."""
        return await anyio.to_thread.run_sync(self._pipelines_sync)

    async def status(self, pipeline: str) -> CheckpointStatus:
        """What is stored for ``pipeline``, damage included, without changing anything."""
        return await anyio.to_thread.run_sync(self._status_sync, pipeline)

    async def overwrite(
        self,
        pipeline: str,
        owner: str,
        build: Callable[[CheckpointStatus, int], Checkpoint],
    ) -> Checkpoint:
        """Claim a new epoch for ``owner`` and store ``build(status, epoch)`` in one locked step.

        See :class:`~riprap.checkpoints.RepairableBackend`; ``build`` runs in a worker thread.
        """
        return await anyio.to_thread.run_sync(self._overwrite_sync, pipeline, owner, build)

    @abstractmethod
    def _claim_sync(self, pipeline: str, owner: str) -> Claim:
        """Blocking :meth:`claim`."""

    @abstractmethod
    def _save_sync(self, checkpoint: Checkpoint, data: bytes) -> None:
        """Blocking :meth:`save` of ``checkpoint``, already encoded as ``data``."""

    @abstractmethod
    def _load_sync(self, pipeline: str) -> Checkpoint | None:
        """Blocking :meth:`load`."""

    @abstractmethod
    def _close_sync(self) -> None:
        """Blocking :meth:`aclose`."""

    @abstractmethod
    def _pipelines_sync(self) -> list[str]:
        """Blocking :meth:`pipelines`."""

    @abstractmethod
    def _status_sync(self, pipeline: str) -> CheckpointStatus:
        """Blocking :meth:`status`."""

    @abstractmethod
    def _overwrite_sync(
        self,
        pipeline: str,
        owner: str,
        build: Callable[[CheckpointStatus, int], Checkpoint],
    ) -> Checkpoint:
        """Blocking :meth:`overwrite`."""
