"""The in-process checkpoint backend, and the fencing rule every embedded backend shares.

:func:`check_save` is the one place the save rule of
:class:`~riprap.checkpoints.CheckpointBackend` is written down; :func:`encode` and
:func:`decode` turn snapshots into bytes and back, turning every kind of
damage into a :class:`~riprap.checkpoints.CheckpointError` that says where and what.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import anyio.lowlevel
import orjson

from riprap._core.errors import CheckpointError, FencedError
from riprap.checkpoints._snapshot import Checkpoint, Claim


def encode(checkpoint: Checkpoint) -> bytes:
    """Serialise a snapshot; call it before any await so the bytes are a consistent cut (I3).

    Raises:
        CheckpointError: The operator state is not JSON-serialisable.
    """
    try:
        return checkpoint.to_json()
    except orjson.JSONEncodeError as exc:
        raise CheckpointError(
            f"checkpoint for pipeline {checkpoint.pipeline!r} cannot be stored: {exc}"
        ) from exc


def decode(data: bytes, *, where: str, pipeline: str) -> Checkpoint:
    """Parse stored bytes and check that they are a well-formed snapshot of ``pipeline``.

    Raises:
        CheckpointError: The bytes are not such a snapshot; the message starts with ``where``.
    """
    try:
        checkpoint = Checkpoint.from_json(data)
    except KeyError as exc:
        raise _corrupt(where, f"missing field {exc}") from exc
    except AttributeError as exc:
        raise _corrupt(where, "not a JSON object") from exc
    except (ValueError, TypeError) as exc:
        raise _corrupt(where, str(exc)) from exc
    problem = _problem(checkpoint, pipeline)
    if problem is not None:
        raise _corrupt(where, problem)
    return checkpoint


def _corrupt(where: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{where}: corrupt checkpoint: {problem}")


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
    if not isinstance(cp.created_at, int | float) or isinstance(cp.created_at, bool):
        return f"created_at {cp.created_at!r} is not a number"
    return None


def check_save(
    checkpoint: Checkpoint, *, epoch: int, owner: str | None, saved: tuple[int, int] | None
) -> None:
    """Apply the fencing rule (I5) against the stored claim and snapshot.

    Args:
        checkpoint: The snapshot being saved.
        epoch: The pipeline's latest claimed epoch (0: never claimed).
        owner: The owner of that claim.
        saved: ``(epoch, seq)`` of the stored snapshot, if any.

    Raises:
        FencedError: The write must be refused; the message says why.
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


@final
class MemoryCheckpoints:
    """Checkpoints in a dict of this process, for tests and embedding.

    Snapshots are stored as their JSON bytes, so a caller mutating its state
    afterwards cannot change a stored checkpoint, and state that could not be
    stored by a durable backend fails here too. Nothing survives the process.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def claim(self, pipeline: str, owner: str) -> Claim:
        """Take the next epoch of ``pipeline`` for ``owner``; return it with the latest snapshot."""
        await anyio.lowlevel.checkpoint()
        entry = self._entries.setdefault(pipeline, _Entry(0, None))
        entry.epoch, entry.owner = entry.epoch + 1, owner
        return Claim(entry.epoch, owner, self._decode(pipeline, entry))

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` if its writer still holds the claim (see :func:`check_save`)."""
        data = encode(checkpoint)
        await anyio.lowlevel.checkpoint()
        # An unclaimed pipeline gets a throwaway entry of epoch 0, which check_save refuses.
        entry = self._entries.get(checkpoint.pipeline) or _Entry(0, None)
        check_save(checkpoint, epoch=entry.epoch, owner=entry.owner, saved=entry.saved)
        entry.snapshot, entry.saved = data, (checkpoint.epoch, checkpoint.seq)

    async def load(self, pipeline: str) -> Checkpoint | None:
        """The latest snapshot of ``pipeline``, or ``None``."""
        await anyio.lowlevel.checkpoint()
        return self._decode(pipeline, self._entries.get(pipeline))

    async def aclose(self) -> None:
        """Nothing to release: the data lives as long as the object, across pipeline runs."""
        await anyio.lowlevel.checkpoint()

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
