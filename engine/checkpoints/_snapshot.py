"""The checkpoint snapshot and the backend protocol every store implements.

A snapshot is one atomic unit: source positions, operator state and crash
counts are saved together (I3). Backends fence writers (I5): ``claim`` takes
the next epoch for an owner, and ``save`` refuses a snapshot whose epoch is
older than the latest claim, so a zombie process cannot roll a checkpoint back.

Integrity (I5): every stored snapshot carries a checksum (sha256 over its
canonical JSON: keys sorted, no whitespace, the checksum field left out) and a
generation that grows with every save of the pipeline, across epochs. The
checksum catches a snapshot changed after it was written, even one that is
still valid JSON; the generation, also recorded outside the store, catches a
store rolled back to an older copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from riprap.checkpoints._canonical import canonical_parts, sha256_of
from riprap.checkpoints._guard import CrashGuard

if TYPE_CHECKING:
    from collections.abc import Mapping

FORMAT_VERSION = 2
"""Version of the stored snapshot: 2 adds ``checksum``, ``generation`` and ``notes``."""

MAX_NOTES = 20
"""Operator notes a snapshot keeps (the latest)."""

_CHECKSUM_PREFIX = "sha256:"


def canonical_json(body: Mapping[str, Any]) -> bytes:
    """``body`` as canonical JSON: keys sorted at every level, no whitespace.

    Parsing the result and serialising it again gives the same bytes, so a
    store may keep the snapshot in any JSON layout (S3 embeds it in a larger
    object) and the checksum still verifies.

    Raises:
        TypeError: A value is not JSON-serialisable (``orjson.JSONEncodeError``).
    """
    return b"".join(canonical_parts(body))


def _checksum(canonical: bytes) -> str:
    return _CHECKSUM_PREFIX + sha256_of((canonical,))


def checksum_problem(raw: Mapping[str, Any]) -> str | None:
    """What is wrong with the checksum of a parsed version-2 snapshot, or ``None``."""
    stored = raw.get("checksum")
    if not isinstance(stored, str):
        return "it has no checksum"
    body = {key: value for key, value in raw.items() if key != "checksum"}
    try:
        computed = _checksum(canonical_json(body))
    except TypeError as exc:  # a parsed snapshot always serialises; be safe anyway
        return f"its checksum cannot be computed: {exc}"
    if stored != computed:
        return (
            f"checksum mismatch (stored {stored[:23]}..., computed {computed[:23]}...):"
            " the snapshot was changed after it was written"
        )
    return None


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
        state: Operator state by ``step_id``; JSON-serialisable values or
            :class:`~riprap.checkpoints.DeferredState` views, built when encoded.
        crash_counts: Per ``"partition@offset"``, how often that record stopped the pipeline.
        created_at: Wall-clock time of the snapshot, seconds since the epoch.
        guard: Crash bookkeeping: whether the run was live, its read frontier, unclean
            ends and records isolated after them (see :class:`CrashGuard`).
        generation: Grows with every save of the pipeline, across epochs and runs;
            also recorded outside the store, so that a store rolled back to an
            older copy is detected (0: written before riprap recorded generations).
        notes: What operators did to this checkpoint (``riprap checkpoint reset``
            or ``set``): who, when, what; the latest 20 are kept.
        identities: Per source partition, what its position counts in (a
            file's fingerprint, the letter a replay sent last), as the
            source's ``identities()`` gave it: the next run's source checks
            it (a file source refuses another file under the same name).
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
    generation: int = 0
    notes: tuple[str, ...] = ()
    identities: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The snapshot as stored: canonical JSON with its checksum (backends store this).

        Built in pieces of bounded cost: called in a worker thread, it leaves the
        event loop free however large the operator state.

        Raises:
            TypeError: The operator state is not JSON-serialisable.
        """
        fields: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "pipeline": self.pipeline,
            "generation": self.generation,
            "epoch": self.epoch,
            "owner": self.owner,
            "seq": self.seq,
            "positions": dict(self.positions),
            "state": dict(self.state),
            "crash_counts": dict(self.crash_counts),
            "created_at": self.created_at,
            "guard": self.guard.to_dict(),
            "notes": list(self.notes),
        }
        if self.identities:  # left out when empty: a snapshot without them reads the same
            fields["identities"] = dict(self.identities)
        parts = canonical_parts(fields)
        checksum = _CHECKSUM_PREFIX + sha256_of(parts)
        # "checksum" sorts first, so the stored bytes are canonical JSON as well.
        parts[0] = b'{"checksum":"' + checksum.encode() + b'",' + parts[0][1:]
        return b"".join(parts)

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        """Parse bytes written by :meth:`to_json` (checking neither types nor checksum).

        :func:`~riprap.checkpoints.decode` checks both; backends use it.
        """
        return cls.from_dict(orjson.loads(data))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Checkpoint:
        """A snapshot from parsed JSON of format version 1 (no checksum) or 2.

        Raises:
            KeyError: A field is missing.
            ValueError: The version is unknown or the crash guard or notes are malformed.
        """
        version = raw.get("version")
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"unknown checkpoint format version {version!r}")
        notes: object = raw["notes"] if version == FORMAT_VERSION else []
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError("notes is not a list of strings")
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
            generation=raw["generation"] if version == FORMAT_VERSION else 0,
            notes=tuple(notes),
            identities=raw.get("identities", {}),
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
    * Integrity: snapshots are stored with :func:`~riprap.checkpoints.encode` and
      read with :func:`~riprap.checkpoints.decode`, which verifies the checksum. A
      durable backend also records the highest generation it saved outside the
      store (after the snapshot is durable) and, in ``claim`` and ``load``, checks
      the stored snapshot against it with
      :func:`~riprap.checkpoints.check_generation`: a damaged, missing or older
      snapshot raises :class:`~riprap.checkpoints.CheckpointIntegrityError`. A
      ``save`` whose generation is below the recorded one is refused.
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
