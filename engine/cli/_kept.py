"""``riprap checkpoint history``: the generations a store keeps, for ``riprap rollback --to``.

Every embedded backend keeps its last ``history`` snapshots per pipeline (see
``riprap.checkpoints._history``); this lists them, newest first: generation,
when and by whom it was saved, and its positions.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from riprap._core.errors import ConfigError
from riprap.checkpoints._history import HistoryBackend
from riprap.cli._runs import EXIT_OK

if TYPE_CHECKING:
    from riprap.checkpoints._integrity import RepairableBackend
    from riprap.checkpoints._snapshot import Checkpoint


async def kept_history(backend: RepairableBackend, pipeline: str) -> list[Checkpoint]:
    """The snapshots ``backend`` keeps of ``pipeline``, newest first.

    Raises:
        ConfigError: The store keeps no history.
        CheckpointIntegrityError: A kept snapshot is damaged.
    """
    if not isinstance(backend, HistoryBackend):
        raise ConfigError(
            "STORE", f"{backend.location}: {type(backend).__name__} keeps no checkpoint history"
        )
    return await backend.history(pipeline)


async def show_history(backend: RepairableBackend, pipeline: str, *, as_json: bool) -> int:
    """Print the kept generations of ``pipeline``; return the exit code."""
    kept = await kept_history(backend, pipeline)
    out = sys.stdout
    if as_json:
        out.writelines(orjson.dumps(kept_summary(cp)).decode() + "\n" for cp in kept)
    else:
        out.write(format_history(pipeline, backend.location, kept))
    return EXIT_OK


def kept_summary(checkpoint: Checkpoint) -> dict[str, Any]:
    """What ``history --json`` prints for one kept snapshot."""
    return {
        "pipeline": checkpoint.pipeline,
        "generation": checkpoint.generation,
        "created_at": checkpoint.created_at,
        "epoch": checkpoint.epoch,
        "seq": checkpoint.seq,
        "owner": checkpoint.owner,
        "positions": dict(checkpoint.positions),
    }


def format_history(pipeline: str, store: str, kept: list[Checkpoint]) -> str:
    """The kept generations for a person, newest first, one line each with its positions."""
    if not kept:
        return f"pipeline {pipeline!r}: {store} keeps no generation of it\n"
    lines = [f"pipeline {pipeline!r}: {len(kept)} generations kept in {store}"]
    for cp in kept:
        positions = ", ".join(f"{p}={n}" for p, n in sorted(cp.positions.items())) or "none"
        lines.append(
            f"  generation {cp.generation:<6} saved {iso(cp.created_at)} by {cp.owner}"
            f" (epoch {cp.epoch}, seq {cp.seq}): {positions}"
        )
    return "\n".join(lines) + "\n"


def iso(epoch: float) -> str:
    """Seconds since the epoch as an ISO time in UTC."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
