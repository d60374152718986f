"""The checkpoint snapshot and the backend protocol every store implements.

A snapshot is one atomic unit: source positions, operator state and crash
counts are saved together (I3). Backends fence writers (I5): ``claim`` takes
the next epoch for an owner, and ``save`` refuses a snapshot whose epoch is
older than the latest claim, so a zombie process cannot roll a checkpoint back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from riprap.checkpoints._guard import CrashGuard

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One consistent cut of a pipeline's progress.

    Attributes:
        pipeline: The pipeline name; a backend may store several pipelines.
        epoch: The fencing epoch of the writer (see
            :meth:`riprap.checkpoints.CheckpointBackend.claim`).
        owner: Who wrote it (host/pid/random by default).
        seq: Increases by one with every save of an epoch; ordering within the epoch.
        positions: Per source partition, the position to resume from: every record
            before it is done (I1).
        state: Operator state by ``step_id``; JSON-serialisable values.
        crash_counts: Per ``"partition@offset"``, how often that record stopped the pipeline.
        created_at: Wall-clock time of the snapshot, seconds since the epoch.
        guard: Crash bookkeeping: whether the run was live, its read frontier, unclean
            ends and records isolated after them (see :class:`CrashGuard`).
    """

    pipeline: str
    epoch: int
    owner: str
    seq: int = 0
    positions: Mapping[str, int] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    crash_counts: Mapping[str, int] = field(default_factory=dict)
    created_at: float = 0.0
    guard: CrashGuard = field(default_factory=CrashGuard)

    def to_json(self) -> bytes:
        """The snapshot as JSON bytes (backends store this)."""
        return orjson.dumps(
            {
                "version": 1,
                "pipeline": self.pipeline,
                "epoch": self.epoch,
                "owner": self.owner,
                "seq": self.seq,
                "positions": dict(self.positions),
                "state": dict(self.state),
                "crash_counts": dict(self.crash_counts),
                "created_at": self.created_at,
                "guard": self.guard.to_dict(),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        """Parse bytes written by :meth:`to_json`."""
        raw = orjson.loads(data)
        if raw.get("version") != 1:
            raise ValueError(f"unknown checkpoint format version {raw.get('version')!r}")
        return cls(
            pipeline=raw["pipeline"],
            epoch=raw["epoch"],
            owner=raw["owner"],
            seq=raw["seq"],
            positions=raw["positions"],
            state=raw["state"],
            crash_counts=raw["crash_counts"],
            created_at=raw["created_at"],
            guard=CrashGuard.from_dict(raw.get("guard", {})),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """What ``CheckpointBackend.claim`` returns: the writer's epoch and the last snapshot."""

    epoch: int
    owner: str
    checkpoint: Checkpoint | None


@runtime_checkable
class CheckpointBackend(Protocol):
    """Where a pipeline's checkpoints live.

    Contract:

    * ``claim(pipeline, owner)`` atomically increments the pipeline's epoch
      (the first claim gets 1; an epoch that already wrote a snapshot is never
      handed out again), records ``owner`` as its holder and returns
      ``Claim(epoch, owner, latest snapshot or None)``.
    * ``save(checkpoint)`` stores the snapshot atomically (all or nothing) and
      durably before it returns. It raises :class:`~riprap.checkpoints.FencedError`, and
      changes nothing, unless ``checkpoint.epoch`` is the latest claimed epoch,
      ``checkpoint.owner`` is the owner of that claim, and
      ``(epoch, seq)`` is greater than the stored snapshot's: a checkpoint never
      goes backwards. ``seq`` must therefore grow with every save call,
      including a retry after an error.
    * ``load(pipeline)`` returns the latest snapshot without claiming, or ``None``.
    * Several pipelines may share one backend; everything is keyed by the
      pipeline name. Only the latest snapshot of each is kept.
    * A stored claim or snapshot that cannot be read back raises
      :class:`~riprap.checkpoints.CheckpointError` naming where it is stored and what is
      wrong; a backend never silently starts from scratch. I/O failures raise
      it too.
    * ``aclose()`` releases what the backend holds open; it is idempotent, the
      stored checkpoints stay, and a later call reopens what it needs.
    * Methods must not block the event loop (run blocking I/O in a thread).
    * A backend that cannot store operator state sets ``supports_state = False``;
      a pipeline with stateful stages is then refused before it runs.
    """

    async def claim(self, pipeline: str, owner: str) -> Claim:
        """Take the next epoch of ``pipeline`` for ``owner``; return it with the latest snapshot."""
        ...

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` atomically and durably, or refuse it (fencing)."""
        ...

    async def load(self, pipeline: str) -> Checkpoint | None:
        """The latest snapshot of ``pipeline`` without claiming it, or ``None``."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds open; stored checkpoints stay."""
        ...
