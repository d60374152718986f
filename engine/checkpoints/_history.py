"""Kept checkpoint generations: a pipeline's last few snapshots, so an operator can go back to one.

A backend that keeps history stores a copy of every snapshot it saves (and of
every operator overwrite) in the same locked step as the latest one, so the
same fencing applies, and thins the older ones beyond its ``history`` option
to a ladder that reaches back further the longer the pipeline runs
(:func:`stale_generations`). A kept snapshot is the same checksummed bytes as
the latest was; reading it back verifies the checksum, so a damaged copy is
refused, never used.
``riprap checkpoint history`` lists them and ``riprap rollback --to`` picks one.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from riprap._core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from riprap.checkpoints._snapshot import Checkpoint

DEFAULT_HISTORY = 10
"""Recent snapshots a backend keeps per pipeline, the latest included, unless told otherwise."""


def stale_generations(generations: Iterable[int], history: int) -> list[int]:
    """The kept generations a backend drops after a save: all but the latest and a ladder.

    Beyond the newest ``history``, the oldest generation of each band of age
    (generations behind the newest) ``[history * 2**(k-1), history * 2**k)`` is
    kept too; it moves on to the next band as the pipeline saves, so the kept
    snapshots reach back to the pipeline's first days while their count grows
    with the logarithm of its age (a day of saves every 5 s keeps 21).

    .. versionadded:: 0.2
    """
    ordered = sorted(set(generations))
    if len(ordered) <= history:
        return []
    newest = ordered[-1]
    bands: set[int] = set()
    stale: list[int] = []
    for generation in ordered[:-history]:  # oldest first: each band keeps its oldest
        band = ((newest - generation) // history).bit_length()
        if band in bands:
            stale.append(generation)
        else:
            bands.add(band)
    return stale


def check_history(history: int) -> int:
    """The ``history`` option, checked.

    Raises:
        ConfigError: Not an integer of at least 1.
    """
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ConfigError("history", f"expected an integer of at least 1, not {history!r}")
    return history


@runtime_checkable
class HistoryBackend(Protocol):
    """A checkpoint backend that keeps a pipeline's last snapshots (see the module docstring)."""

    async def history(self, pipeline: str) -> list[Checkpoint]:
        """The kept snapshots of ``pipeline``, newest first (the latest included), verified.

        Raises:
            CheckpointIntegrityError: A kept snapshot is damaged (named by the error).
        """
        ...


def kept_snapshot(kept: Sequence[Checkpoint], to: int | datetime) -> Checkpoint:
    """The kept snapshot of generation ``to``, or the newest created at or before time ``to``.

    Raises:
        ConfigError: No kept snapshot matches; the message lists what is kept.
    """
    if isinstance(to, datetime):
        moment = to.timestamp()
        found = [cp for cp in kept if cp.created_at <= moment]
        if found:
            return max(found, key=lambda cp: cp.generation)
    else:
        found = [cp for cp in kept if cp.generation == to]
        if found:
            return found[0]
    generations = sorted(cp.generation for cp in kept)
    what = f"generations {generations[0]} to {generations[-1]}" if generations else "nothing"
    target = f"generation {to}" if isinstance(to, int) else f"a generation saved by {to}"
    raise ConfigError("--to", f"{target} is not kept: the store keeps {what}")
