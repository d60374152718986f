"""PostgreSQL change-data-capture source: a consistent snapshot, then a logical replication slot.

The slot is read with ``pg_logical_slot_peek_binary_changes`` (the built-in
``pgoutput`` plugin) through a cursor, a batch at a time, so a huge
transaction never sits in memory whole. Peeking consumes nothing: the slot is
advanced with ``pg_replication_slot_advance`` only to a position a checkpoint
already holds (I1), so a crash replays from the checkpoint and never skips.

Handover without gap or double: the slot is created first (every transaction
committed after its consistent point is in the stream), then the snapshot is
taken (every transaction committed before it is in the rows). A streamed
transaction the snapshot already sees is dropped (:class:`SnapshotCut`).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
import asyncpg

from riprap import ConfigError, SourceBatch, SystemClock, TransientError

from . import _pgoutput as pgoutput
from ._errors import ReplicationSlotError, classify, format_lsn
from ._lag import PostgresCDCStatistics, WalLag
from ._positions import SNAPSHOT_LIMIT, SnapshotCut, decode, encode, parse_lsn
from ._snapshot import Shape, SnapshotReader
from ._values import converter
from ._weight import FetchSizer, text_sizes

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap import SourceContext

__all__ = ("PostgresCDCSource",)

logger = logging.getLogger("riprap.connectors.postgres")

_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}\Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")

_PEEK = (
    "SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_peek_binary_changes("
    "$1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)"
)
_SLOT = (
    "SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots "
    "WHERE slot_name = $1 AND database = current_database()"
)
_RUNNING = "SELECT array_agg(backend_xid::text) FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
_STILL_RUNNING = "SELECT count(*) FROM pg_stat_activity WHERE backend_xid::text = ANY($1::text[])"
_UNDEFINED_OBJECT, _NOT_IN_PREREQUISITE_STATE = "42704", "55000"
"""What peeking a dropped slot, or one the server invalidated, fails with."""
_OLD, _HELD, _LIVE = 0, 1, 2
"""A streamed transaction is already done (before the resume point), held by the
snapshot (dropped), or live (its changes are handed over)."""


@final
class PostgresCDCSource:
    """Streams row changes of a publication's tables, after a snapshot of their rows.

    Each record's value is a Debezium-shaped change event: ``op`` (``r`` for a
    snapshot row, ``c`` insert, ``u`` update, ``d`` delete, ``t`` truncate),
    ``before`` (when the table's replica identity gives it: the key columns by
    default, the whole row with ``REPLICA IDENTITY FULL``), ``after``,
    ``source`` (``schema``, ``table``, ``lsn``, ``txId``, ``ts_ms`` commit
    time, ``snapshot``) and ``ts_ms``; its key is ``{key column: value}``.
    Column values: see :mod:`riprap.connectors.postgres`.

    Args:
        dsn: The connection string; its user needs the ``REPLICATION``
            attribute (and ``SELECT`` on the tables). Never logged.
        slot: The logical replication slot; created on the first run.
        publication: The publication naming the tables (``CREATE PUBLICATION``).
        snapshot: Whether the first run reads every existing row first.
        poll_interval: Seconds between two looks at an idle slot.
        timeout: Seconds for connecting.
        reconnect_timeout: Seconds of connection failures in a row, while
            streaming, before the run stops with the last one.
        lag_interval: Seconds (on the pipeline's clock) between two look-ups
            of the server's WAL position for :meth:`lag`.
        name: The source's name (also the connections' ``application_name``).

    Raises:
        ConfigError: A name is invalid or a number out of range.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        dsn: str,
        *,
        slot: str,
        publication: str,
        snapshot: bool = True,
        poll_interval: float = 0.2,
        timeout: float = 30.0,
        reconnect_timeout: float = 900.0,
        lag_interval: float = 5.0,
        name: str = "postgres-cdc",
    ) -> None:
        if not isinstance(slot, str) or not _SLOT_NAME.match(slot):
            raise ConfigError("PostgresCDCSource.slot", f"{slot!r}: use a-z, 0-9 and _ (<= 63)")
        if not isinstance(publication, str) or not _NAME.match(publication):
            raise ConfigError("PostgresCDCSource.publication", f"{publication!r} is not a name")
        for option, seconds in (
            ("poll_interval", poll_interval),
            ("timeout", timeout),
            ("reconnect_timeout", reconnect_timeout),
            ("lag_interval", lag_interval),
        ):
            if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
                raise ConfigError(
                    f"PostgresCDCSource.{option}", f"must be seconds > 0: {seconds!r}"
                )
        self._dsn = dsn
        self.slot, self.publication, self.snapshot = slot, publication, snapshot
        self.poll_interval, self.timeout, self.name = float(poll_interval), float(timeout), name
        self.reconnect_timeout = float(reconnect_timeout)
        self.partition = f"slot:{slot}"
        self._conn: asyncpg.Connection | None = None
        self._reader: SnapshotReader | None = None
        self._stream = _Stream(self.partition, slot)
        self._next = 0  # the next snapshot row's position
        self._snapshot_end = 0
        self._snapshot_ms = 0
        self._confirmed = 0  # the slot's confirmed LSN, as far as this source moved it
        self._confirm_to = 0  # the latest LSN a checkpoint holds
        self._wal = WalLag(slot, float(lag_interval), SystemClock())
        self._sizer = FetchSizer(None)
        self._pending: tuple[list[Any], list[int]] | None = None
        """Rows of the current peek fetched but not handed out yet (a fetch cut by bytes),
        with their weights."""
        self._snapshot_sizer = FetchSizer(None, text_sizes)
        self._snapshot_rest: tuple[Shape, list[Any], list[int]] | None = None
        """Snapshot rows fetched but not handed out yet (a fetch cut by bytes), weighed."""

    async def open(self, context: SourceContext) -> None:
        """Connect, check the server and the slot, and start the snapshot or the stream.

        Raises:
            ConfigError: ``wal_level`` is not ``logical`` or the publication is missing.
            ReplicationSlotError: The checkpoint is in the stream but the slot was
                dropped, lost needed WAL, or was moved past the checkpoint.
            TransientError: The server cannot be reached.
        """
        position = context.positions.get(self.partition, 0)
        self._sizer = FetchSizer(context.max_batch_bytes)
        self._snapshot_sizer = FetchSizer(context.max_batch_bytes, text_sizes)
        self._wal = WalLag(self.slot, self._wal.interval, context.clock or SystemClock())
        try:
            self._conn = conn = await self._connect()
            await self._check_server(conn)
            slot = await conn.fetchrow(_SLOT, self.slot)
            if position >= SNAPSHOT_LIMIT:
                lsn, index = decode(position)
                self._confirmed = self._check_slot(slot, lsn)
                self._stream.resume(lsn, index, None)
            else:
                await self._start(conn, slot, position)
            self._wal.confirmed(self._confirmed)
            self._wal.read_to(self._stream.position_lsn)
            await self._wal.look_up(conn)
        except Exception as exc:
            await self._disconnect()
            raise classify(exc, f"{self.name}: slot {self.slot}") from None

    async def _check_server(self, conn: asyncpg.Connection) -> None:
        level = await conn.fetchval("SHOW wal_level")
        if level != "logical":
            problem = f"the server runs with wal_level={level}; change data capture needs logical"
            raise ConfigError("wal_level", problem)
        if not await conn.fetchval(
            "SELECT 1 FROM pg_publication WHERE pubname = $1", self.publication
        ):
            problem = f"publication {self.publication!r} does not exist: CREATE PUBLICATION first"
            raise ConfigError("PostgresCDCSource.publication", problem)

    def _check_slot(self, slot: Mapping[str, Any] | None, lsn: int) -> int:
        """The slot's confirmed LSN, after checking it can resume at ``lsn`` without a gap."""
        if slot is None:
            raise ReplicationSlotError(self.slot, "dropped", lsn)
        if slot["wal_status"] == "lost":
            raise ReplicationSlotError(self.slot, "lost", lsn)
        confirmed = parse_lsn(slot["confirmed_flush_lsn"])
        if confirmed > lsn:
            raise ReplicationSlotError(self.slot, "ahead", lsn, f"slot at {format_lsn(confirmed)}")
        return confirmed

    async def _start(self, conn: asyncpg.Connection, slot: Any, position: int) -> None:
        """First run, or a restart before the snapshot was done: (re)take the snapshot.

        A restart keeps the slot and replays it from its start without dropping
        anything the new snapshot holds (the first attempt's rows may be in the
        sink already): duplicates, never a gap.
        """
        fresh = slot is None
        if fresh:
            created = "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
            lsn = parse_lsn(await conn.fetchval(created, self.slot))
        else:
            lsn = self._check_slot(slot, parse_lsn(slot["confirmed_flush_lsn"]))
        self._confirmed = lsn
        self._next, self._snapshot_end = position, encode(lsn, 0)
        self._snapshot_rest = None
        if self._snapshot_end <= position:
            raise RuntimeError(f"slot {self.slot}: LSN {lsn} is too low for snapshot positions")
        cut: SnapshotCut | None = None
        if self.snapshot:
            await self._wait_for_running(conn)
            self._reader, cut, self._snapshot_ms = await SnapshotReader.begin(
                self._dsn, self.publication, self.timeout
            )
        self._stream.resume(lsn, 0, cut if fresh else None)

    async def _wait_for_running(self, conn: asyncpg.Connection) -> None:
        """Wait until the transactions running now have ended, before the snapshot is taken.

        A transaction whose commit record precedes the slot's consistent point
        is not in the stream; it must be in the snapshot. Its backend makes it
        visible to new snapshots a moment after writing that record, so every
        transaction still holding an id now is waited for.
        """
        running = await conn.fetchval(_RUNNING)
        if running:
            for _ in itertools.count():  # as long as they run: slot creation waits the same way
                if not await conn.fetchval(_STILL_RUNNING, running):
                    return
                await anyio.sleep(self.poll_interval)

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next snapshot rows, then the next changes; waits while the slot is idle.

        A connection lost while streaming is opened again (backing off up to
        5 s), resuming right after the last change handed over, for up to
        ``reconnect_timeout`` seconds of failures in a row.

        Raises:
            TransientError: The connection failed during the snapshot (a restart
                takes it again), or kept failing for ``reconnect_timeout`` seconds.
        """
        if self._next < self._snapshot_end:
            try:
                if self._wal.due() and self._conn is not None:
                    await self._wal.look_up(self._conn)
                return await self._read_snapshot(max_records)
            except Exception as exc:
                raise classify(exc, f"{self.name}: slot {self.slot}") from None
        failing_since: float | None = None
        for attempt in itertools.count():
            try:
                batch = await self._read_stream(max_records)
            except Exception as exc:
                error = self._slot_error(exc) or classify(exc, f"{self.name}: slot {self.slot}")
                now = anyio.current_time()
                failing_since = now if failing_since is None else failing_since
                if not isinstance(error, TransientError) or (
                    now - failing_since > self.reconnect_timeout
                ):
                    raise error from None
                await self._drop_connection(attempt, error)
                continue
            failing_since = None
            if batch is not None:
                return batch
        raise AssertionError("unreachable")  # pragma: no cover

    def _slot_error(self, exc: Exception) -> ReplicationSlotError | None:
        """The named error when the slot vanished (dropped) or was invalidated while streaming."""
        state = getattr(exc, "sqlstate", "") if isinstance(exc, asyncpg.PostgresError) else ""
        position = self._stream.position_lsn
        if state == _UNDEFINED_OBJECT:
            return ReplicationSlotError(self.slot, "dropped", position, str(exc))
        if state == _NOT_IN_PREREQUISITE_STATE:
            return ReplicationSlotError(self.slot, "lost", position, str(exc))
        return None

    async def _drop_connection(self, attempt: int, error: Exception) -> None:
        """Drop the broken connection and back off; the next read connects again."""
        logger.warning(
            "%s: reconnecting to the server (attempt %d): %s", self.name, attempt + 1, error
        )
        self._stream.transaction = self._stream.cursor = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
        await anyio.sleep(min(0.1 * 2**attempt, 5.0))

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._dsn, timeout=self.timeout, server_settings={"application_name": self.name}
        )

    async def _read_snapshot(self, max_records: int) -> SourceBatch:
        sizer = self._snapshot_sizer
        if self._snapshot_rest is not None:
            (shape, rows, sizes), self._snapshot_rest = self._snapshot_rest, None
        else:
            reader = self._reader
            got = None if reader is None else await reader.fetch(sizer.size(max_records))
            if got is None:  # done: the position moves to the stream's start
                start, self._reader = self._next, None
                if reader is not None:
                    await reader.aclose()
                self._next = self._snapshot_end
                return SourceBatch(self.partition, [], start=start, end=self._snapshot_end)
            shape, rows = got
            sizes = sizer.weigh(rows)
        count, nbytes = sizer.cut(sizes)
        if count < len(rows):
            rows, self._snapshot_rest = rows[:count], (shape, rows[count:], sizes[count:])
        start = self._next
        self._next += len(rows)
        if self._next >= SNAPSHOT_LIMIT:
            raise OverflowError(f"slot {self.slot}: a snapshot of {SNAPSHOT_LIMIT} rows or more")
        source: dict[str, Any] = {"schema": shape.schema, "table": shape.table, "slot": self.slot}
        source |= {"lsn": None, "txId": None, "ts_ms": self._snapshot_ms, "snapshot": True}
        values: list[Any] = []
        keys: list[Any] = []
        for row in rows:
            after = shape.row(row)
            values.append(_event("r", None, after, source, self._snapshot_ms))
            keys.append({key: after[key] for key in shape.keys} or None)
        stamps: list[float | None] = [self._snapshot_ms / 1000] * len(values)
        return SourceBatch(
            self.partition, values, start=start, keys=keys, timestamps=stamps, nbytes=nbytes
        )

    async def _read_stream(self, max_records: int) -> SourceBatch | None:
        """One cursor fetch of the current peek; ``None`` when it held nothing new."""
        conn = self._conn
        if conn is None:  # after a lost connection
            self._conn = conn = await self._connect()
        stream, wal = self._stream, self._wal
        if wal.due():
            await wal.look_up(conn)
        if stream.cursor is None:
            await self._confirm(conn)
            stream.transaction = conn.transaction(readonly=True)
            await stream.transaction.start()
            stream.cursor = await conn.cursor(_PEEK, self.slot, self.publication)
            stream.began()
            wal.peek_began()
            self._pending = None  # a new peek reads them again
        sizer = self._sizer
        if self._pending is not None:
            (rows, sizes), self._pending = self._pending, None
        else:
            rows = await stream.cursor.fetch(sizer.size(max_records))
            sizes = sizer.weigh(rows)
        if rows:
            count, nbytes = sizer.cut(sizes)
            if count < len(rows):
                rows, self._pending = rows[:count], (rows[count:], sizes[count:])
            wal.read_to(parse_lsn(rows[-1][0]))
            batch = stream.decode(rows)
            if batch is not None:
                batch.nbytes = nbytes
            return batch
        wal.peek_ended()
        await stream.end_peek()
        if not stream.fresh_in_peek:
            await anyio.sleep(self.poll_interval)
        return None

    async def _confirm(self, conn: asyncpg.Connection) -> None:
        """Advance the slot to the latest checkpointed transaction end (I1)."""
        if self._confirm_to > self._confirmed:
            advance = "SELECT pg_replication_slot_advance($1, $2::pg_lsn)"
            await conn.execute(advance, self.slot, self._confirm_to)
            self._confirmed = self._confirm_to
            self._wal.confirmed(self._confirmed)

    async def committed(self, positions: Mapping[str, int]) -> None:
        """Note the checkpointed position: the slot is advanced to it before the next peek."""
        position = positions.get(self.partition, 0)
        if position >= SNAPSHOT_LIMIT:
            self._confirm_to = max(self._confirm_to, decode(position)[0])
        await anyio.lowlevel.checkpoint()

    def lag(self) -> dict[str, int]:
        """Bytes of WAL between the server and what the source has read; 0 when caught up.

        The server's position is looked up at most every ``lag_interval`` seconds.
        """
        behind = self._wal.bytes_behind()
        return {} if behind is None else {self.partition: behind}

    def statistics(self) -> PostgresCDCStatistics | None:
        """The server's, the source's and the slot's WAL positions and the lags between them.

        ``None`` before the source is open.
        """
        return self._wal.statistics()

    async def aclose(self) -> None:
        """End the snapshot and the peek, confirm what the last checkpoint holds, disconnect."""
        conn = self._conn
        try:
            if conn is not None and not conn.is_closed() and await self._stream.end_peek():
                await self._confirm(conn)
        finally:
            await self._disconnect()

    async def _disconnect(self) -> None:
        """Close the snapshot's connection and the slot's, confirming nothing."""
        reader, self._reader = self._reader, None
        conn, self._conn = self._conn, None
        self._pending = self._snapshot_rest = None
        try:
            if reader is not None:
                await reader.aclose()
        finally:
            if conn is not None:
                await conn.close(timeout=self.timeout)


@final
class _Stream:
    """Decodes peeked pgoutput rows into change events and keeps the read position."""

    def __init__(self, partition: str, slot: str) -> None:
        self.partition, self.slot = partition, slot
        self.transaction: Any = None
        self.cursor: Any = None
        self.fresh_in_peek = False
        self._lsn = self._index = 0  # read position: resume after txn ending at _lsn, skip _index
        self._base = 0  # end LSN of the transaction before the current one
        self._skip = 0  # changes of the current transaction already handed over
        self._cut: SnapshotCut | None = None
        self._mode = _LIVE
        self._begin: pgoutput.Begin | None = None
        self._shapes: dict[int, Shape] = {}

    @property
    def position_lsn(self) -> int:
        """The end of the last transaction read."""
        return self._lsn

    def resume(self, lsn: int, index: int, cut: SnapshotCut | None) -> None:
        """Start reading after the transaction ending at ``lsn``, skipping ``index`` changes."""
        self._lsn, self._index, self._cut = lsn, index, cut

    def began(self) -> None:
        """A new peek starts at the slot's confirmed LSN: skip what was read already."""
        self._base, self._skip, self._mode = self._lsn, self._index, _LIVE
        self._shapes.clear()
        self.fresh_in_peek = False

    async def end_peek(self) -> bool:
        """Close the cursor's transaction (peeking changes nothing on the server).

        Returns whether the connection is still usable: a fetch cancelled midway
        (a stop) leaves its transaction failed, and the connection is then closed.
        """
        transaction, self.transaction, self.cursor = self.transaction, None, None
        if transaction is not None:
            try:
                await transaction.rollback()
            except asyncpg.InterfaceError:
                return False
        return True

    def decode(self, rows: list[Any]) -> SourceBatch | None:
        """The live changes among ``rows`` as one batch ending at the read position."""
        values: list[Any] = []
        keys: list[Any] = []
        offsets: list[int] = []
        stamps: list[float | None] = []
        for lsn, xid, data in rows:
            message = pgoutput.parse(data)
            if isinstance(message, pgoutput.Begin):
                self._on_begin(message)
            elif isinstance(message, pgoutput.Commit):
                self._on_commit(message)
            elif isinstance(message, pgoutput.Relation):
                self._shapes[message.oid] = _shape(message)
            elif isinstance(message, pgoutput.Change | pgoutput.Truncate):
                for value, key in self._events(message, parse_lsn(lsn), xid):
                    if self._index >= self._skip:
                        offsets.append(encode(self._base, self._index))
                        values.append(value)
                        keys.append(key)
                        stamps.append(value["ts_ms"] / 1000)
                    self._index += 1
                    self._lsn = self._base
        if not values:
            return None
        self.fresh_in_peek = True
        end = encode(self._lsn, self._index)
        return SourceBatch(
            self.partition,
            values,
            start=offsets[0],
            end=end,
            offsets=offsets,
            keys=keys,
            timestamps=stamps,
        )

    def _on_begin(self, begin: pgoutput.Begin) -> None:
        self._begin = begin
        if begin.commit_lsn < self._base:
            self._mode = _OLD
            return
        held = self._cut is not None and self._cut.holds(begin.xid, begin.commit_lsn)
        self._mode = _HELD if held else _LIVE
        self._index = 0
        if self._lsn != self._base:  # not the first transaction after the resume point
            self._skip = 0
        self._lsn = self._base

    def _on_commit(self, commit: pgoutput.Commit) -> None:
        if self._mode != _OLD:
            self._base = self._lsn = commit.end_lsn
            self._index = self._skip = 0
        if self._cut is not None and self._base >= self._cut.until_lsn:
            self._cut = None  # no later transaction can be in the snapshot
        self._mode, self._begin = _LIVE, None

    def _events(
        self, message: pgoutput.Change | pgoutput.Truncate, lsn: int, xid: int
    ) -> list[Any]:
        """``(value, key)`` per event of a live transaction; none for an old or held one."""
        begin = self._begin
        if self._mode != _LIVE or begin is None:
            return []
        commit = {"lsn": lsn, "txId": xid, "ts_ms": begin.commit_ms, "snapshot": False}
        if isinstance(message, pgoutput.Truncate):
            return [
                (_event("t", None, None, self._source(oid, commit), begin.commit_ms), None)
                for oid in message.relation_oids
            ]
        shape = self._shapes[message.relation_oid]
        after = _image(shape, message.new, key_only=False)
        before = _image(shape, message.old, key_only=message.old_is_key)
        row = after if message.op != "d" else before
        key = {k: row[k] for k in shape.keys if k in row} if row else None
        source = self._source(message.relation_oid, commit)
        return [(_event(message.op, before, after, source, begin.commit_ms), key or None)]

    def _source(self, oid: int, commit: dict[str, Any]) -> dict[str, Any]:
        shape = self._shapes[oid]
        return {"schema": shape.schema, "table": shape.table, "slot": self.slot, **commit}


def _event(op: str, before: Any, after: Any, source: dict[str, Any], ts_ms: int) -> dict[str, Any]:
    return {"op": op, "before": before, "after": after, "source": source, "ts_ms": ts_ms}


def _shape(relation: pgoutput.Relation) -> Shape:
    columns = relation.columns
    return Shape(
        relation.schema,
        relation.table,
        tuple(c.name for c in columns),
        tuple(converter(c.type_oid) for c in columns),
        tuple(c.name for c in columns if c.key),
    )


def _image(shape: Shape, values: pgoutput.Tuple | None, *, key_only: bool) -> dict[str, Any] | None:
    """A row image as ``{column: value}``; unchanged TOASTed columns are left out."""
    if values is None:
        return None
    image: dict[str, Any] = {}
    for name, convert, value in zip(shape.names, shape.converters, values, strict=False):
        if value is pgoutput.UNCHANGED or (key_only and name not in shape.keys):
            continue
        image[name] = None if value is None else convert(value)  # type: ignore[arg-type]
    return image
