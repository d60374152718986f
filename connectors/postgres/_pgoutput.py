"""Parse the messages of PostgreSQL's built-in ``pgoutput`` plugin (protocol version 1).

Logical decoding through the SQL functions hands over one message per row:
``B`` begins a transaction, ``R`` describes a table (sent before its first
change in each decoding session and again after its schema changes), ``I``,
``U``, ``D`` and ``T`` are changes and ``C`` commits. Column values arrive in
their text form; ``None`` is SQL NULL and :data:`UNCHANGED` a TOASTed value the
update did not touch (the server does not resend it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, final

UNCHANGED: Final = object()
"""An unchanged TOASTed column of an update (its value is not in the message)."""

_EPOCH_2000_MS = 946_684_800_000
"""PostgreSQL timestamps count microseconds from 2000-01-01; this is that instant in Unix ms."""

Tuple = tuple[str | object | None, ...]


@final
@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts: its commit LSN, commit time (Unix ms) and id."""

    commit_lsn: int
    commit_ms: int
    xid: int


@final
@dataclass(frozen=True, slots=True)
class Commit:
    """A transaction ends; ``end_lsn`` is where the next one may start (the slot's unit)."""

    commit_lsn: int
    end_lsn: int


@final
@dataclass(frozen=True, slots=True)
class Column:
    """A column: name, type oid, and whether it belongs to the replica identity (the key)."""

    name: str
    type_oid: int
    key: bool


@final
@dataclass(frozen=True, slots=True)
class Relation:
    """A table's current description."""

    oid: int
    schema: str
    table: str
    columns: tuple[Column, ...]


@final
@dataclass(frozen=True, slots=True)
class Change:
    """One row change: ``op`` is ``c``, ``u`` or ``d``; ``old`` is set when the server sends it.

    ``old_is_key``: ``old`` holds the replica identity's key columns only (the
    others are ``None``), rather than the whole old row (``REPLICA IDENTITY FULL``).
    """

    op: str
    relation_oid: int
    old: Tuple | None
    new: Tuple | None
    old_is_key: bool = False


@final
@dataclass(frozen=True, slots=True)
class Truncate:
    """Tables emptied by ``TRUNCATE``."""

    relation_oids: tuple[int, ...]


Message = Begin | Commit | Relation | Change | Truncate | None


def parse(data: bytes) -> Message:
    """One pgoutput message; ``None`` for kinds riprap does not use (origin, type, message).

    Raises:
        ValueError: The message is truncated or of an unknown kind.
    """
    kind = data[:1]
    if kind == b"B":
        lsn, ts, xid = struct.unpack_from("!qqI", data, 1)
        return Begin(lsn, _EPOCH_2000_MS + ts // 1000, xid)
    if kind == b"C":
        commit_lsn, end_lsn = struct.unpack_from("!qq", data, 2)
        return Commit(commit_lsn, end_lsn)
    if kind == b"R":
        return _relation(data)
    if kind in (b"I", b"U", b"D"):
        return _change(kind, data)
    if kind == b"T":
        (count,) = struct.unpack_from("!i", data, 1)
        return Truncate(struct.unpack_from(f"!{count}I", data, 6))
    if kind in (b"O", b"Y", b"M"):
        return None
    raise ValueError(f"unknown pgoutput message kind {kind!r}")


def _string(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\0", at)
    return data[at:end].decode(), end + 1


def _relation(data: bytes) -> Relation:
    (oid,) = struct.unpack_from("!I", data, 1)
    schema, at = _string(data, 5)
    table, at = _string(data, at)
    (count,) = struct.unpack_from("!h", data, at + 1)
    at += 3
    columns = []
    for _ in range(count):
        flags = data[at]
        name, at = _string(data, at + 1)
        (type_oid,) = struct.unpack_from("!I", data, at)
        at += 8
        columns.append(Column(name, type_oid, bool(flags & 1)))
    return Relation(oid, schema or "pg_catalog", table, tuple(columns))


def _change(kind: bytes, data: bytes) -> Change:
    (oid,) = struct.unpack_from("!I", data, 1)
    at, old, new = 5, None, None
    old_is_key = data[at : at + 1] == b"K"
    if data[at : at + 1] in (b"K", b"O"):
        old, at = _tuple(data, at + 1)
    if data[at : at + 1] == b"N":
        new, at = _tuple(data, at + 1)
    op = {b"I": "c", b"U": "u", b"D": "d"}[kind]
    return Change(op, oid, old, new, old_is_key)


def _tuple(data: bytes, at: int) -> tuple[Tuple, int]:
    (count,) = struct.unpack_from("!h", data, at)
    at += 2
    values: list[str | object | None] = []
    for _ in range(count):
        kind = data[at : at + 1]
        at += 1
        if kind == b"n":
            values.append(None)
        elif kind == b"u":
            values.append(UNCHANGED)
        elif kind in (b"t", b"b"):
            (size,) = struct.unpack_from("!i", data, at)
            values.append(data[at + 4 : at + 4 + size].decode())
            at += 4 + size
        else:
            raise ValueError(f"unknown pgoutput column kind {kind!r}")
    return tuple(values), at
