"""Source positions of the CDC source, and which streamed transactions a snapshot already holds.

One partition per slot; positions are integers that never go backwards:

* below :data:`SNAPSHOT_LIMIT`: the initial snapshot is under way (the count
  of snapshot rows handed out, across attempts). Resuming there takes a new
  snapshot and replays the slot from its start: at-least-once, never a gap.
* from :data:`SNAPSHOT_LIMIT` on: ``lsn << 16 | index``, "resume after the
  transaction that ended at ``lsn``, skipping the first ``index`` changes of the
  next one". The slot itself can only be confirmed at transaction ends, so
  ``lsn`` is what it is advanced to once a checkpoint holds the position. An
  index beyond 65,535 is held at 65,535: a checkpoint inside a transaction that
  large replays its tail from there (duplicates, never a loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

SHIFT = 16
INDEX_MAX = (1 << SHIFT) - 1
SNAPSHOT_LIMIT = 1 << 32
LSN_LIMIT = 1 << (63 - SHIFT)
"""Positions stay below 2**63 (checkpoints hold 64-bit integers): 128 TiB of WAL."""


def encode(lsn: int, index: int) -> int:
    """The position of change ``index`` of the transaction after the one ending at ``lsn``."""
    if lsn >= LSN_LIMIT:
        raise OverflowError(f"LSN {lsn} is beyond what a 64-bit position can hold")
    return lsn << SHIFT | min(index, INDEX_MAX)


def decode(position: int) -> tuple[int, int]:
    """``(lsn, index)`` of a streaming position."""
    return position >> SHIFT, position & INDEX_MAX


def parse_lsn(text: str) -> int:
    """An LSN from PostgreSQL's ``X/X`` notation."""
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


@final
@dataclass(frozen=True, slots=True)
class SnapshotCut:
    """Which transactions a snapshot sees, to drop them from the stream that follows it.

    A transaction committed before the snapshot was taken is visible in it and
    is already in its rows; a streamed transaction is dropped when it is, so
    the handover has no double, and one that is not visible is streamed, so it
    has no gap. Only transactions whose commit record precedes ``until_lsn``
    (the WAL insert position read inside the snapshot) can be visible.
    """

    xmin: int
    xmax: int
    in_progress: frozenset[int]
    until_lsn: int

    @classmethod
    def parse(cls, snapshot: str, until_lsn: int) -> SnapshotCut:
        """From ``pg_current_snapshot()``'s text ``xmin:xmax:xip,...`` (64-bit ids)."""
        xmin, xmax, xip = snapshot.split(":")
        running = frozenset(int(x) for x in xip.split(",") if x)
        return cls(int(xmin), int(xmax), running, until_lsn)

    def holds(self, xid: int, commit_lsn: int) -> bool:
        """Whether the snapshot already saw the transaction (``xid`` as streamed: 32 bits)."""
        if commit_lsn >= self.until_lsn:
            return False
        distance = (xid - self.xmax) % (1 << 32)  # 32-bit ids wrap: the nearer one is meant
        full = self.xmax + (distance - (1 << 32) if distance >= 1 << 31 else distance)
        return full < self.xmin or (full < self.xmax and full not in self.in_progress)
