"""Checkpoints: the snapshot, the backend protocol, the embedded backends and the rules they share.

A backend stores one :class:`Checkpoint` per pipeline (positions, operator state,
crash counts) and refuses writes from a stale owner or an older epoch (I5).
Every snapshot carries a checksum and a generation; durable backends record the
generation outside the store too, so a damaged, missing or rolled-back
checkpoint stops the run with a :class:`CheckpointIntegrityError` instead of
restarting from an older position. :func:`encode`, :func:`decode`,
:func:`check_save`, :func:`claim_problem`, :func:`check_generation`,
:func:`encode_generation`, :func:`decode_generation`, :func:`encode_in_thread`
and :func:`stale_generations` are what a third-party backend (see
``riprap.connectors.s3``) builds on; :class:`RepairableBackend` is what the
``riprap checkpoint`` command needs of one. A stage with a large state hands
it over as a :class:`DeferredState`, encoded off the event loop.

.. versionadded:: 0.1
"""

from __future__ import annotations

from riprap._core.errors import CheckpointError as CheckpointError
from riprap._core.errors import CheckpointIntegrityError as CheckpointIntegrityError
from riprap._core.errors import FencedError as FencedError
from riprap._core.public import fixup_module_metadata
from riprap.checkpoints._canonical import DeferredState as DeferredState
from riprap.checkpoints._file import FileCheckpoints as FileCheckpoints
from riprap.checkpoints._guard import CrashGuard as CrashGuard
from riprap.checkpoints._guard import CrashRecord as CrashRecord
from riprap.checkpoints._history import stale_generations as stale_generations
from riprap.checkpoints._integrity import CheckpointStatus as CheckpointStatus
from riprap.checkpoints._integrity import RepairableBackend as RepairableBackend
from riprap.checkpoints._integrity import check_generation as check_generation
from riprap.checkpoints._integrity import decode_generation as decode_generation
from riprap.checkpoints._integrity import encode_generation as encode_generation
from riprap.checkpoints._memory import MemoryCheckpoints as MemoryCheckpoints
from riprap.checkpoints._memory import check_save as check_save
from riprap.checkpoints._memory import claim_problem as claim_problem
from riprap.checkpoints._memory import decode as decode
from riprap.checkpoints._memory import encode as encode
from riprap.checkpoints._snapshot import Checkpoint as Checkpoint
from riprap.checkpoints._snapshot import CheckpointBackend as CheckpointBackend
from riprap.checkpoints._snapshot import Claim as Claim
from riprap.checkpoints._sqlite import SqliteCheckpoints as SqliteCheckpoints
from riprap.checkpoints._threaded import encode_in_thread as encode_in_thread

__all__ = (
    "Checkpoint",
    "CheckpointBackend",
    "CheckpointError",
    "CheckpointIntegrityError",
    "CheckpointStatus",
    "Claim",
    "CrashGuard",
    "CrashRecord",
    "DeferredState",
    "FencedError",
    "FileCheckpoints",
    "MemoryCheckpoints",
    "RepairableBackend",
    "SqliteCheckpoints",
    "check_generation",
    "check_save",
    "claim_problem",
    "decode",
    "decode_generation",
    "encode",
    "encode_generation",
    "encode_in_thread",
    "stale_generations",
)

fixup_module_metadata(__name__, globals())
