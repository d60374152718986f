"""How far the CDC source is behind its server in bytes of WAL, looked up every few seconds.

The server's WAL position is read with one small query when the last one is
``interval`` seconds old (on the pipeline's clock), never once per read; in
between, the lag shrinks as the source reads. What the source has read is the
LSN of the last change it handed over, and once a peek is used up, at least
the server position last looked up before that peek began: a peek decodes the
WAL up to the server's flush position at its start, so nothing before that
position is left unread. Caught up, the lag is therefore exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from ._positions import parse_lsn

if TYPE_CHECKING:
    import asyncpg

    from riprap import Clock

__all__ = ("PostgresCDCStatistics", "WalLag")

_POLL = (
    "SELECT pg_current_wal_flush_lsn()::text, (SELECT confirmed_flush_lsn::text "
    "FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database())"
)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresCDCStatistics:
    """Where the server, the source and the slot are in the WAL (LSNs as integers).

    Attributes:
        server_lsn: The server's flush position at the last look-up.
        read_lsn: How far the source has read.
        confirmed_lsn: The slot's confirmed position (what the server keeps WAL from).
        read_lag_bytes: WAL between the server and what the source has read
            (``lag()``, 0 when caught up).
        retained_bytes: WAL between the server and the slot's confirmed
            position: what the server holds for this slot, up to the last checkpoint.
        looked_up_at: The pipeline clock's ``monotonic()`` at the last look-up.

    .. versionadded:: 0.2
    """

    server_lsn: int
    read_lsn: int
    confirmed_lsn: int
    read_lag_bytes: int
    retained_bytes: int
    looked_up_at: float


@final
class WalLag:
    """The server's WAL position, looked up when due, against what the source read and confirmed."""

    __slots__ = ("_at", "_clock", "_confirmed", "_floor", "_read", "_server", "interval", "slot")

    def __init__(self, slot: str, interval: float, clock: Clock) -> None:
        self.slot, self.interval, self._clock = slot, interval, clock
        self._server: int | None = None
        self._at = 0.0
        self._read = self._confirmed = self._floor = 0

    def due(self) -> bool:
        """Whether the last look-up is ``interval`` seconds old (or there was none)."""
        return self._server is None or self._clock.monotonic() - self._at >= self.interval

    async def look_up(self, conn: asyncpg.Connection) -> None:
        """Read the server's flush position and the slot's confirmed position (one query)."""
        server, confirmed = await conn.fetchrow(_POLL, self.slot)
        self._server, self._at = parse_lsn(server), self._clock.monotonic()
        if confirmed is not None:
            self.confirmed(parse_lsn(confirmed))

    def confirmed(self, lsn: int) -> None:
        """The slot's confirmed position moved to ``lsn``."""
        self._confirmed = max(self._confirmed, lsn)

    def read_to(self, lsn: int) -> None:
        """The source has handed over everything up to ``lsn``."""
        self._read = max(self._read, lsn)

    def peek_began(self) -> None:
        """A peek starts: it decodes at least up to the position last looked up."""
        self._floor = self._server or 0

    def peek_ended(self) -> None:
        """The peek is used up: everything before its start position has been read."""
        self._read = max(self._read, self._floor)

    def bytes_behind(self) -> int | None:
        """WAL bytes between the server (at the last look-up) and what was read; ``None`` before."""
        return None if self._server is None else max(self._server - self._read, 0)

    def statistics(self) -> PostgresCDCStatistics | None:
        """The positions and both lags; ``None`` before the first look-up."""
        server = self._server
        if server is None:
            return None
        return PostgresCDCStatistics(
            server_lsn=server,
            read_lsn=self._read,
            confirmed_lsn=self._confirmed,
            read_lag_bytes=max(server - self._read, 0),
            retained_bytes=max(server - self._confirmed, 0),
            looked_up_at=self._at,
        )
