"""The in-process checkpoint backend, and the fencing rule every embedded backend shares.

:func:`check_save` is the one place the save rule of
:class:`~riprap.checkpoints.CheckpointBackend` is written down; :func:`encode` and
:func:`decode` turn snapshots into bytes and back, turning every kind of
damage into a :class:`~riprap.checkpoints.CheckpointIntegrityError` that says
where and what. :func:`decode` verifies the checksum, so a snapshot changed
after it was written is refused even when it is still valid JSON.

A snapshot written before checksums (format version 1) is accepted with a
warning: the next save rewrites it with one. It cannot be older than a
recorded generation without being refused, since its generation counts as 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import anyio.lowlevel
import anyio.to_thread
import orjson

from riprap._core.errors import CheckpointError, CheckpointIntegrityError, FencedError
from riprap.checkpoints._history import DEFAULT_HISTORY, check_history, stale_generations
from riprap.checkpoints._integrity import CheckpointStatus, is_generation
from riprap.checkpoints._snapshot import Checkpoint, Claim, checksum_problem

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("riprap.checkpoint")


def encode(checkpoint: Checkpoint) -> bytes:
    """Serialise a snapshot; call it before any await so the bytes are a consistent cut (I3).

    Raises:
        CheckpointError: The operator state is not JSON-serialisable.
    """
    try:
        return checkpoint.to_json()
    except TypeError as exc:  # orjson.JSONEncodeError included
        raise CheckpointError(
            f"checkpoint for pipeline {checkpoint.pipeline!r} cannot be stored: {exc}"
        ) from exc


def decode(data: bytes, *, where: str, pipeline: str) -> Checkpoint:
    """Parse stored bytes, check that they are a snapshot of ``pipeline``, verify its checksum.

    Raises:
        CheckpointIntegrityError: The bytes are not such a snapshot (torn, garbled,
            wrong types, another pipeline's) or its checksum does not match; the
            message starts with ``where``.
    """
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _corrupt(where, pipeline, str(exc)) from exc
    if not isinstance(raw, dict):
        raise _corrupt(where, pipeline, "not a JSON object")
    try:
        checkpoint = Checkpoint.from_dict(raw)
    except KeyError as exc:
        raise _corrupt(where, pipeline, f"missing field {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise _corrupt(where, pipeline, str(exc)) from exc
    problem = _problem(checkpoint, pipeline)
    if problem is None and raw.get("version") != 1:
        problem = checksum_problem(raw)
    if problem is not None:
        raise _corrupt(where, pipeline, problem)
    if raw.get("version") == 1:
        log.warning(
            "%s: the checkpoint of pipeline %r was written before riprap checked checksums"
            " (format version 1); it is trusted once without verification, and the next"
            " save adds a checksum and a generation",
            where,
            pipeline,
            extra={"pipeline": pipeline},
        )
    return checkpoint


def _corrupt(where: str, pipeline: str, problem: str) -> CheckpointIntegrityError:
    return CheckpointIntegrityError(
        where, f"corrupt checkpoint: {problem}", pipeline=pipeline, damaged=True
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and _is_int(v) for k, v in value.items()
    )


def _problem(cp: Checkpoint, pipeline: str) -> str | None:
    """What is wrong with a parsed snapshot, or ``None`` (``from_json`` checks no types)."""
    if cp.pipeline != pipeline:
        return f"it belongs to pipeline {cp.pipeline!r}, not {pipeline!r}"
    if not _is_int(cp.epoch) or cp.epoch < 1:
        return f"epoch {cp.epoch!r} is not a positive integer"
    if not _is_int(cp.seq) or cp.seq < 0:
        return f"seq {cp.seq!r} is not a non-negative integer"
    owner: object = cp.owner  # typed str, but from_json does not check
    if not isinstance(owner, str):
        return f"owner {owner!r} is not a string"
    if not _is_int_map(cp.positions):
        return "positions is not a mapping of partition to integer"
    if not _is_int_map(cp.crash_counts):
        return "crash_counts is not a mapping of string to integer"
    if not isinstance(cp.state, dict):
        return "state is not a mapping"
    identities: object = cp.identities  # typed, but from_json does not check
    if not isinstance(identities, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in identities.items()
    ):
        return "identities is not a mapping of partition to string"
    if not isinstance(cp.created_at, int | float) or isinstance(cp.created_at, bool):
        return f"created_at {cp.created_at!r} is not a number"
    if not is_generation(cp.generation):
        return f"generation {cp.generation!r} is not a non-negative integer"
    return None


def check_save(
    checkpoint: Checkpoint,
    *,
    epoch: int,
    owner: str | None,
    saved: tuple[int, int] | None,
    recorded: int = 0,
) -> None:
    """Apply the fencing rule (I5) against the stored claim and snapshot, then the generation.

    Args:
        checkpoint: The snapshot being saved.
        epoch: The pipeline's latest claimed epoch (0: never claimed).
        owner: The owner of that claim.
        saved: ``(epoch, seq)`` of the stored snapshot, if any.
        recorded: The generation recorded outside the store (0: none).

    Raises:
        FencedError: The write must be refused; the message says why.
        CheckpointError: The snapshot's generation is below the recorded one:
            storing it would make the store look rolled back.
    """
    cp = checkpoint
    if cp.epoch < epoch:
        raise FencedError(cp.pipeline, epoch=cp.epoch, current_epoch=epoch, owner=cp.owner)
    if epoch == 0:
        problem = "the pipeline has never been claimed"
    elif cp.epoch > epoch:
        problem = f"epoch {cp.epoch} has not been claimed (latest claim: {epoch})"
    elif cp.owner != owner:
        problem = f"epoch {epoch} is held by {owner!r}, not {cp.owner!r}"
    elif saved is not None and (cp.epoch, cp.seq) <= saved:
        problem = f"(epoch, seq) {(cp.epoch, cp.seq)} is not newer than the stored {saved}"
    else:
        if cp.generation < recorded:
            raise CheckpointError(
                f"checkpoint for pipeline {cp.pipeline!r} refused: its generation"
                f" {cp.generation} is below the recorded generation {recorded}"
            )
        return
    error = FencedError(cp.pipeline, epoch=cp.epoch, current_epoch=epoch, owner=cp.owner)
    # FencedError's own message only describes a stale epoch; say what actually happened.
    error.args = (f"checkpoint for pipeline {cp.pipeline!r} refused: {problem}",)
    raise error


@dataclass(slots=True)
class _Entry:
    epoch: int
    owner: str | None
    snapshot: bytes | None = None
    saved: tuple[int, int] | None = None
    kept: dict[int, bytes] = field(default_factory=dict)
    """The kept snapshots by generation, the latest included."""


@final
class MemoryCheckpoints:
    """Checkpoints in a dict of this process, for tests and embedding.

    Snapshots are stored as their JSON bytes, so a caller mutating its state
    afterwards cannot change a stored checkpoint, and state that could not be
    stored by a durable backend fails here too; their checksum is verified on
    every read. Nothing survives the process, so no generation is recorded
    outside the store: there is nothing to roll back.

    Args:
        history: Snapshots kept per pipeline, the latest included (see :meth:`history`).
    """

    __slots__ = ("_entries", "_history")

    location = "memory"
    """No ``riprap checkpoint`` command reaches this store; the name is for messages."""

    def __init__(self, *, history: int = DEFAULT_HISTORY) -> None:
        self._entries: dict[str, _Entry] = {}
        self._history = check_history(history)

    async def claim(self, pipeline: str, owner: str) -> Claim:
        """Take the next epoch of ``pipeline`` for ``owner``; return it with the latest snapshot."""
        await anyio.lowlevel.checkpoint()
        entry = self._entries.setdefault(pipeline, _Entry(0, None))
        latest = self._decode(pipeline, entry)  # damage refuses the claim before it counts
        entry.epoch, entry.owner = entry.epoch + 1, owner
        return Claim(entry.epoch, owner, latest)

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` if its writer still holds the claim (see :func:`check_save`)."""
        data = await anyio.to_thread.run_sync(encode, checkpoint)  # off the loop, however large
        # An unclaimed pipeline gets a throwaway entry of epoch 0, which check_save refuses.
        entry = self._entries.get(checkpoint.pipeline) or _Entry(0, None)
        check_save(checkpoint, epoch=entry.epoch, owner=entry.owner, saved=entry.saved)
        entry.snapshot, entry.saved = data, (checkpoint.epoch, checkpoint.seq)
        self._keep(entry, data, checkpoint.generation)

    async def load(self, pipeline: str) -> Checkpoint | None:
        """The latest snapshot of ``pipeline``, or ``None``."""
        await anyio.lowlevel.checkpoint()
        return self._decode(pipeline, self._entries.get(pipeline))

    async def history(self, pipeline: str) -> list[Checkpoint]:
        """The kept snapshots of ``pipeline``, newest first, each verified."""
        await anyio.lowlevel.checkpoint()
        entry = self._entries.get(pipeline)
        kept = entry.kept if entry is not None else {}
        return [
            decode(kept[generation], where="memory (history)", pipeline=pipeline)
            for generation in sorted(kept, reverse=True)
        ]

    def _keep(self, entry: _Entry, data: bytes, generation: int, *, prune: bool = True) -> None:
        """Keep ``data`` as the newest snapshot of the history, thinning the older ones.

        An operator's overwrite (``prune=False``) drops nothing: the tool may not
        know the ``history`` the pipeline's runs keep.
        """
        entry.kept[generation] = data
        for stale in stale_generations(entry.kept, self._history) if prune else ():
            del entry.kept[stale]

    async def aclose(self) -> None:
        """Nothing to release: the data lives as long as the object, across pipeline runs."""
        await anyio.lowlevel.checkpoint()

    async def pipelines(self) -> list[str]:
        """The pipelines claimed here, sorted."""
        await anyio.lowlevel.checkpoint()
        return sorted(self._entries)

    async def status(self, pipeline: str) -> CheckpointStatus:
        """What is stored for ``pipeline``, damage included."""
        await anyio.lowlevel.checkpoint()
        return self._status(pipeline)

    async def overwrite(
        self,
        pipeline: str,
        owner: str,
        build: Callable[[CheckpointStatus, int], Checkpoint],
    ) -> Checkpoint:
        """Claim a new epoch and store ``build(status, epoch)`` (see ``RepairableBackend``)."""
        await anyio.lowlevel.checkpoint()
        status = self._status(pipeline)
        last = status.checkpoint.epoch if status.checkpoint is not None else 0
        epoch = max(status.epoch, last) + 1
        checkpoint = build(status, epoch)
        status.check_replacement(checkpoint, epoch=epoch, owner=owner)
        data = encode(checkpoint)
        entry = _Entry(epoch, owner, data, (epoch, checkpoint.seq))
        if pipeline in self._entries:
            entry.kept = self._entries[pipeline].kept
        self._keep(entry, data, checkpoint.generation, prune=False)
        self._entries[pipeline] = entry
        return checkpoint

    def _status(self, pipeline: str) -> CheckpointStatus:
        entry = self._entries.get(pipeline)
        return CheckpointStatus.examine(
            pipeline,
            where=self.location,
            record=None,
            store=None,
            recorded=lambda: 0,
            claim=lambda: (entry.epoch, entry.owner) if entry is not None else (0, None),
            snapshot=lambda: self._decode(pipeline, entry),
        )

    @staticmethod
    def _decode(pipeline: str, entry: _Entry | None) -> Checkpoint | None:
        if entry is None or entry.snapshot is None:
            return None
        return decode(entry.snapshot, where="memory", pipeline=pipeline)


def claim_problem(raw: object, pipeline: str) -> str | None:
    """What is wrong with a stored claim ``{version, pipeline, epoch, owner}``, if anything."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    if raw.get("version") != 1:
        return f"unknown format version {raw.get('version')!r}"
    if raw.get("pipeline") != pipeline:
        return f"it belongs to pipeline {raw.get('pipeline')!r}, not {pipeline!r}"
    epoch = raw.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        return f"epoch {epoch!r} is not a positive integer"
    if not isinstance(raw.get("owner"), str):
        return f"owner {raw.get('owner')!r} is not a string"
    return None
