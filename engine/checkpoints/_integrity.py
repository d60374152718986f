"""Generations recorded outside the store, the checks made with them, and a store's status.

A durable backend records the highest generation it has saved somewhere the
snapshot store does not hold it (a small file beside the store, a separate
object), after the snapshot itself is durable. So the record is never ahead
of a store that was not damaged, and a claim or load that finds the stored
snapshot behind the record knows the store was rolled back:
:func:`check_generation` then raises
:class:`~riprap.checkpoints.CheckpointIntegrityError`. Readers read the record
before the store, so a save landing between the two reads cannot look like a
rollback.

:class:`CheckpointStatus` and :class:`RepairableBackend` are what the
``riprap checkpoint`` command reads and repairs stores through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import orjson

from riprap._core.errors import CheckpointError, CheckpointIntegrityError
from riprap.checkpoints._snapshot import CheckpointBackend

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap.checkpoints._snapshot import Checkpoint

_RECORD_VERSION = 1


def check_generation(
    checkpoint: Checkpoint | None,
    recorded: int,
    *,
    pipeline: str,
    where: str,
    record: str | None,
    store: str | None,
) -> None:
    """Refuse a stored snapshot that is missing or older than the recorded generation.

    Args:
        checkpoint: The stored snapshot (decoded and verified), or ``None`` if there is none.
        recorded: The generation recorded outside the store (0: none recorded).
        pipeline: The pipeline.
        where: Where the snapshot is stored, for the message.
        record: Where ``recorded`` was read from, for the message.
        store: The store as ``riprap checkpoint`` takes it, for the hint in the message.

    Raises:
        CheckpointIntegrityError: There is no snapshot although a generation was
            recorded (the store was deleted or replaced after a run), or the
            snapshot's generation is below the recorded one (the store was
            rolled back). The message names the store, both generations and the
            ``riprap checkpoint`` commands that inspect and repair it.
    """
    if checkpoint is None:
        if recorded <= 0:
            return  # a first start
        problem = (
            f"the checkpoint of pipeline {pipeline!r} is missing, but a run saved one:"
            " the store was deleted, replaced, or lost its last writes (such as a deleted"
            " SQLite -wal file) after that run"
        )
        found = None
    elif checkpoint.generation < recorded:
        problem = (
            f"the checkpoint of pipeline {pipeline!r} is older than the latest one saved:"
            " the store was rolled back (an older copy restored, or its last writes lost,"
            " such as a deleted or damaged SQLite -wal file)"
        )
        found = checkpoint.generation
    else:
        return
    raise CheckpointIntegrityError(
        where,
        problem,
        pipeline=pipeline,
        expected=recorded,
        found=found,
        record=record,
        store=store,
    )


def encode_generation(pipeline: str, generation: int) -> bytes:
    """A generation record of one pipeline: ``{"version", "pipeline", "generation"}``."""
    return orjson.dumps(
        {"version": _RECORD_VERSION, "pipeline": pipeline, "generation": generation}
    )


def decode_generation(data: bytes, *, where: str, pipeline: str) -> int:
    """The generation in a record written by :func:`encode_generation`.

    Raises:
        CheckpointError: The record is damaged or another pipeline's; the
            message names ``where``.
    """
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise corrupt_record(where, str(exc)) from exc
    if not isinstance(raw, dict):
        raise corrupt_record(where, "not a JSON object")
    if raw.get("version") != _RECORD_VERSION:
        raise corrupt_record(where, f"unknown format version {raw.get('version')!r}")
    if raw.get("pipeline") != pipeline:
        raise corrupt_record(where, f"it belongs to pipeline {raw.get('pipeline')!r}")
    generation = raw.get("generation")
    if not isinstance(generation, int) or not is_generation(generation):
        raise corrupt_record(where, f"generation {generation!r} is not a non-negative integer")
    return generation


def is_generation(value: object) -> bool:
    """Whether ``value`` can be a generation: a non-negative integer."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def corrupt_record(where: str, problem: str) -> CheckpointError:
    """The error for a generation record that cannot be read."""
    return CheckpointError(
        f"{where}: corrupt generation record: {problem}; check the store with"
        " `riprap checkpoint show`; `riprap checkpoint reset --yes` rewrites the record"
    )


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    """What a store holds for one pipeline, read without trusting it (``riprap checkpoint show``).

    Attributes:
        pipeline: The pipeline.
        where: Where its snapshot is stored (a file, a database and pipeline, a URL).
        record: Where its generation is recorded outside the store (``None``: nowhere).
        recorded: The recorded generation (0: none recorded, or the record is unreadable).
        epoch: The latest claimed epoch (0: never claimed, or unknown).
        owner: The owner of that claim, if known.
        checkpoint: The stored snapshot if it can be read and verified, else ``None``.
        problem: What a claim would stop with: the snapshot is damaged, missing
            or older than recorded, or the claim or the record is corrupt;
            ``None`` when the store is consistent with its record.
    """

    pipeline: str
    where: str
    record: str | None
    recorded: int
    epoch: int
    owner: str | None
    checkpoint: Checkpoint | None
    problem: CheckpointError | None

    @property
    def consistent(self) -> bool:
        """Whether a run would start from this store, that is, it has no :attr:`problem`."""
        return self.problem is None

    @property
    def next_generation(self) -> int:
        """The generation an operator's overwrite takes, above every one recorded or stored."""
        stored = self.checkpoint.generation if self.checkpoint is not None else 0
        return max(self.recorded, stored) + 1

    @classmethod
    def examine(
        cls,
        pipeline: str,
        *,
        where: str,
        record: str | None,
        store: str | None,
        recorded: Callable[[], int],
        claim: Callable[[], tuple[int, str | None]],
        snapshot: Callable[[], Checkpoint | None],
    ) -> CheckpointStatus:
        """A store's status, read through three callables; damage goes into ``problem``.

        Args:
            pipeline: The pipeline.
            where: Where its snapshot is stored.
            record: Where its generation is recorded (``None``: nowhere).
            store: The store as ``riprap checkpoint`` takes it (for hints).
            recorded: Reads the recorded generation (called first).
            claim: Reads ``(epoch, owner)`` of the latest claim.
            snapshot: Reads and decodes the stored snapshot.

        Raises:
            CheckpointError: A read failed for a reason other than damage (I/O).
        """
        problem: CheckpointError | None = None
        try:
            generation = recorded()
        except CheckpointError as exc:
            generation, problem = 0, exc
        try:
            epoch, owner = claim()
        except CheckpointError as exc:
            epoch, owner = 0, None
            problem = problem or exc
        checkpoint: Checkpoint | None = None
        try:
            checkpoint = snapshot()
            check_generation(
                checkpoint, generation, pipeline=pipeline, where=where, record=record, store=store
            )
        except CheckpointIntegrityError as exc:
            located = exc
            if exc.expected is None:  # damage found by decode: add the record and the hint
                located = exc.located(expected=generation, record=record, store=store)
            problem = problem or located
        return cls(
            pipeline=pipeline,
            where=where,
            record=record,
            recorded=generation,
            epoch=epoch,
            owner=owner,
            checkpoint=checkpoint,
            problem=problem,
        )

    def check_replacement(self, checkpoint: Checkpoint, *, epoch: int, owner: str) -> None:
        """Refuse what an ``overwrite`` builder returned unless it can be the new latest.

        Raises:
            CheckpointError: Wrong pipeline, epoch or owner, or a generation not
                above every generation recorded or stored.
        """
        floor = self.next_generation - 1
        if checkpoint.pipeline != self.pipeline:
            problem = f"it is pipeline {checkpoint.pipeline!r}'s"
        elif (checkpoint.epoch, checkpoint.owner) != (epoch, owner):
            problem = (
                f"it has epoch {checkpoint.epoch} of {checkpoint.owner!r}, not {epoch} of {owner!r}"
            )
        elif checkpoint.generation <= floor:
            problem = f"its generation {checkpoint.generation} is not above {floor}"
        else:
            return
        raise CheckpointError(f"{self.where}: cannot store the new checkpoint: {problem}")


@runtime_checkable
class RepairableBackend(CheckpointBackend, Protocol):
    """A backend the ``riprap checkpoint`` command can inspect and repair.

    The embedded backends and ``S3Checkpoints`` implement it. ``overwrite`` is
    for deliberate operator actions: it takes a new epoch (a run still using the
    store is fenced out and stops) and writes a snapshot without trusting, or
    needing, what is stored.
    """

    @property
    def location(self) -> str:
        """The store as ``riprap checkpoint`` takes it (a path, ``s3://bucket/prefix``)."""
        ...

    async def pipelines(self) -> list[str]:
        """The pipelines with a claim, a snapshot or a recorded generation here, sorted."""
        ...

    async def status(self, pipeline: str) -> CheckpointStatus:
        """What is stored for ``pipeline``, damage included, without changing anything."""
        ...

    async def overwrite(
        self,
        pipeline: str,
        owner: str,
        build: Callable[[CheckpointStatus, int], Checkpoint],
    ) -> Checkpoint:
        """Claim a new epoch for ``owner`` and store ``build(status, epoch)`` in one locked step.

        ``build`` gets the store's status and the new epoch and returns the
        snapshot to store (that epoch, ``owner``, a generation above every one
        recorded or stored: :attr:`CheckpointStatus.next_generation`); if it
        raises, nothing changes. The generation is recorded, replacing a
        corrupt record. Returns what was stored.
        """
        ...
