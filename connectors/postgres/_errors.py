"""What a PostgreSQL failure means to riprap: a bad row, a passing outage, or a lost slot."""

from __future__ import annotations

from typing import Literal, final

import asyncpg

from riprap import DataError, EngineError, TransientError

_ROW_CLASSES = {"22": "invalid_value", "23": "constraint_violation"}
"""SQLSTATE classes about the data of a row: data exceptions, integrity constraint violations."""

_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
"""Connection exceptions, rollbacks (serialization, deadlock), resources, operator intervention
(shutdown, statement timeout), system errors: the same statement may work a moment later."""


def classify(exc: Exception, where: str) -> Exception:
    """``exc`` as riprap sees it: a :class:`~riprap.DataError`, a :class:`~riprap.TransientError`
    or ``exc`` itself (a bug or a configuration problem, which stops the run)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        message = f"{where}: {type(exc).__name__}: {exc}"
        if state[:2] in _ROW_CLASSES:
            return DataError(message, reason=_ROW_CLASSES[state[:2]])
        if state[:2] in _TRANSIENT_CLASSES:
            return TransientError(message)
        return exc  # type: ignore[no-any-return]  # asyncpg is untyped: exc is an Exception
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return TransientError(f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, UnicodeEncodeError):  # text with a lone surrogate: no UTF-8 for it
        problem = f"text that is not valid Unicode at character {exc.start}: {exc.reason}"
        return DataError(f"{where}: {problem}", reason="invalid_value")
    return exc


@final
class ReplicationSlotError(EngineError):
    """The replication slot cannot resume from the checkpoint without a gap (never skipped).

    Like Kafka's retention gap: changes between the checkpoint and what the
    slot still holds are gone, so the run stops instead of continuing without
    them. Recover by re-snapshotting into a new pipeline (a new checkpoint).

    Attributes:
        slot: The slot's name.
        problem: ``"dropped"``, ``"lost"`` or ``"ahead"``.
        position: The checkpointed LSN.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        slot: str,
        problem: Literal["dropped", "lost", "ahead"],
        position: int,
        detail: str = "",
    ) -> None:
        self.slot = slot
        self.problem = problem
        self.position = position
        why = {
            "dropped": "no longer exists (it was dropped)",
            "lost": "lost WAL it still needed (max_slot_wal_keep_size removed it)",
            "ahead": "was advanced past the checkpoint by someone else",
        }[problem]
        super().__init__(
            f"replication slot {slot!r} {why}; the checkpoint is at LSN {format_lsn(position)}"
            f"{': ' + detail if detail else ''}; changes after it cannot be read again, so the "
            "run stops: start a new pipeline (new checkpoint) to take a fresh snapshot"
        )


def format_lsn(lsn: int) -> str:
    """An LSN in PostgreSQL's ``X/X`` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
