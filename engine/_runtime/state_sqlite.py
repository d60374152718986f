"""Keyed state on local disk: one SQLite database per step and source partition.

The state can outgrow memory: only values changed since the last checkpoint
are held in memory, the rest is read from the database. The checkpoint holds
just a commit number per partition; the database holds the values.

Why the two agree after any crash (I3): at every checkpoint cut, inside the
cut (no await), each partition's changes below the cut's position are written
in one SQLite transaction that also records the commit number and the
position, together with *undo records* (the values the commit replaced). The
cut then carries those commit numbers into the checkpoint, which is saved
after. A crash can therefore leave a database ahead of the saved checkpoint
(its commit written, the checkpoint's save lost), never behind it. On start,
each database is reconciled with the checkpoint: a database ahead is rolled
back with its undo records to the checkpoint's commit; one behind it (deleted,
restored from an older copy, its ``-wal`` lost) or ahead beyond its undo
records stops the run with a :class:`~riprap.state.StateStoreError`. Undo
records are deleted once a checkpoint that covers them is known saved.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from riprap._core.files import make_directory
from riprap._core.sqlite_wal import use_wal
from riprap._core.state_values import StateStoreError, restored_partitions

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap._core.state_values import Entry

log = logging.getLogger("riprap.state")

KIND = "sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_expiry ON state (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS commits (id INTEGER PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS undo (
    commit_id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT, expires_at REAL,
    PRIMARY KEY (commit_id, key)) WITHOUT ROWID;
"""

_UNDO_CHANGED = (
    "INSERT OR IGNORE INTO undo (commit_id, key, value, expires_at) "
    "SELECT ?1, ?2, s.value, s.expires_at FROM (SELECT 1) LEFT JOIN state s ON s.key = ?2"
)
_UNDO_EXPIRED = (
    "INSERT OR IGNORE INTO undo (commit_id, key, value, expires_at) "
    "SELECT ?, key, value, expires_at FROM state WHERE expires_at <= ?"
)
_UPSERT = (
    "INSERT INTO state (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
    "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
_LOCK_WAIT = 5.0
"""Seconds a connection waits for another's lock (SQLite's own default)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_COPY_OFFSET, _COPY_POSITION, _COPY_AT = "changelog_offset", "changelog_position", "changelog_at"
"""Meta rows of a changelog's local copy: the offset and position it matches, and when."""

LOCAL_COPY_MAX_AGE = 12 * 3600.0
"""Seconds after which a local copy is rebuilt from the changelog rather than brought up to date."""


@final
@dataclass(frozen=True, slots=True)
class SqliteStore:
    """Keyed state in SQLite files under ``directory``, one per step and source partition.

    Files are ``directory/<pipeline>/<step>/<partition>-<hash>.db`` (mode
    0600); keep the directory with the checkpoint store and on local disk.

    Args:
        directory: Where the databases live.

    .. versionadded:: 0.1
    """

    directory: str | os.PathLike[str]
    kind = KIND

    def open(self, *, pipeline: str, step_id: str, restored: Any) -> SqlitePartitions:
        """The step's databases, each reconciled with the restored checkpoint (``None``: none).

        Raises:
            StateStoreError: The checkpoint holds other state under the step, or a
                database is missing, behind, ahead beyond its undo records, or
                belongs to another pipeline, step or partition.
        """
        root = Path(self.directory) / pipeline / step_id
        expected = restored_partitions(KIND, str(root), restored)
        partitions = SqlitePartitions(root, pipeline, step_id)
        partitions.reconcile(expected)
        return partitions


def file_name(partition: str) -> str:
    """A file name for ``partition``: readable, safe on any file system, unique by its hash."""
    digest = hashlib.sha256(partition.encode()).hexdigest()[:16]
    return f"{_UNSAFE.sub('_', partition)[:60]}-{digest}.db"


@final
class SqlitePartitions:
    """Every partition database of one step."""

    __slots__ = ("logged", "partitions", "pipeline", "root", "step_id")

    def __init__(self, root: Path, pipeline: str, step_id: str, *, logged: bool = False) -> None:
        self.root = root
        self.pipeline = pipeline
        self.step_id = step_id
        self.logged = logged
        """Whether the databases are local copies of a changelog (no checkpoint commits)."""
        self.partitions: dict[str, SqliteBacking] = {}

    def reconcile(self, expected: Mapping[str, Mapping[str, int]]) -> None:
        """Open the databases the checkpoint names, and any other found, each at its commit."""
        make_directory(self.root)
        for name, info in expected.items():
            self._open(name).reconcile(int(info["commit"]), int(info["position"]))
        for path in sorted(self.root.glob("*.db")):
            if not any(b.path == path for b in self.partitions.values()):
                backing = SqliteBacking(path, None, self.pipeline, self.step_id)
                self.partitions[backing.partition] = backing
                backing.reconcile(0, 0)

    def partition(self, name: str) -> SqliteBacking:
        backing = self.partitions.get(name)
        if backing is None:
            backing = self._open(name)
            if not self.logged:
                backing.reconcile(0, 0)
        return backing

    def _open(self, name: str) -> SqliteBacking:
        if self.logged:
            make_directory(self.root)
        path = self.root / file_name(name)
        backing = SqliteBacking(path, name, self.pipeline, self.step_id, logged=self.logged)
        self.partitions[name] = backing
        return backing

    def local(self, name: str) -> tuple[int, int] | None:
        """The changelog offset and position of ``name``'s local copy, if it has a usable one."""
        if name not in self.partitions and not (self.root / file_name(name)).exists():
            return None
        return self.partition(name).local()

    def release(self, name: str) -> None:
        """Close ``name``'s database; its file stays, a local copy for when it comes back."""
        backing = self.partitions.pop(name, None)
        if backing is not None:
            backing.close()

    def snapshot(self, now: float) -> dict[str, Any]:
        """Each partition's last commit and its position: what the databases must match."""
        parts = {
            name: {"commit": b.head, "position": b.position}
            for name, b in self.partitions.items()
            if b.head > 0
        }
        return {"store": KIND, "partitions": parts}

    def commits(self) -> dict[str, int]:
        """Each partition's last commit."""
        return {name: b.head for name, b in self.partitions.items() if b.head > 0}

    def confirmed(self, commits: Mapping[str, int]) -> None:
        """A saved checkpoint covers these commits: their undo records go at the next commit."""
        for name, commit in commits.items():
            backing = self.partitions.get(name)
            if backing is not None:
                backing.durable = max(backing.durable, commit)

    def close(self) -> None:
        for backing in self.partitions.values():
            backing.close()


@final
class SqliteBacking:
    """One partition's database: its values, its commit number and position, its undo records."""

    __slots__ = (
        "__weakref__",
        "connections",
        "copy",
        "created",
        "db",
        "durable",
        "head",
        "logged",
        "partition",
        "path",
        "pending",
        "position",
        "writer",
    )

    def __init__(
        self,
        path: Path,
        partition: str | None,
        pipeline: str,
        step_id: str,
        *,
        logged: bool = False,
    ) -> None:
        self.path = path
        existed = path.exists()
        if not existed:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        # Used from the event loop's thread; the finalizer that closes the connections
        # may run wherever the garbage collector does (a checkpoint's worker thread).
        self.db = _connect(path)
        self.writer: sqlite3.Connection | None = None
        """A local copy's second connection, for commits from a worker thread."""
        self.connections = [self.db]
        weakref.finalize(self, _close_all, self.connections)  # a run leaves none open
        self.db.executescript(_SCHEMA)
        meta = dict(self.db.execute("SELECT name, value FROM meta").fetchall())
        if not meta:
            if partition is None:
                raise StateStoreError(str(path), "has no partition record: not a riprap store")
            meta = {"pipeline": pipeline, "step": step_id, "partition": partition}
            meta |= {"head": "0", "position": "0"}
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        expected = {
            "pipeline": pipeline,
            "step": step_id,
            "partition": partition if partition is not None else meta.get("partition"),
        }
        found = {name: meta.get(name) for name in expected}
        if found != expected:
            raise StateStoreError(str(path), f"belongs to {found}, not to {expected}")
        self.partition: str = meta["partition"]
        self.head = int(meta["head"])
        self.position = int(meta["position"])
        self.durable = 0
        """The highest commit a saved checkpoint covers: undo records up to it can go."""
        self.created = not existed
        self.logged = logged
        """A changelog's local copy: cut changes wait in ``pending`` until the log has them."""
        self.pending: dict[str, Entry] = {}
        self.copy: tuple[int, int, float] | None = None
        """As a local copy: the changelog offset and position it matches, and when."""
        if _COPY_OFFSET in meta:
            self.copy = (
                int(meta[_COPY_OFFSET]),
                int(meta[_COPY_POSITION]),
                float(meta[_COPY_AT]),
            )
        if self.copy is not None and not logged:
            raise StateStoreError(
                str(path),
                "is the local copy of a changelog, not a store the checkpoint covers: run the "
                "pipeline with its changelog, or delete the file to start this step over",
            )

    def read(self, token: str) -> tuple[str, float | None] | None:
        pending = self.pending
        if token in pending:
            return pending[token]
        row = self.db.execute("SELECT value, expires_at FROM state WHERE key = ?", (token,))
        found: tuple[str, float | None] | None = row.fetchone()
        return found

    def tokens(self, now: float) -> list[str]:
        rows = self.db.execute(
            "SELECT key FROM state WHERE expires_at IS NULL OR expires_at > ?", (now,)
        )
        found = {token for (token,) in rows.fetchall()}
        for token, entry in self.pending.items():
            if entry is None or (entry[1] is not None and entry[1] <= now):
                found.discard(token)
            else:
                found.add(token)
        return sorted(found)

    def apply(self, changes: Mapping[str, Entry], position: int, now: float) -> None:
        """Write the changes below ``position`` as the next commit, with their undo records.

        One transaction: the values, the undo records of what they replace (and
        of what expired), the commit's number and position, and the removal of
        undo records a saved checkpoint has made useless. A local copy keeps
        them pending instead, until the changelog has them (:meth:`write_pending`).
        """
        if self.logged:
            self.pending.update(changes)
            return
        head = self.head + 1
        upserts = [(t, e[0], e[1]) for t, e in changes.items() if e is not None]
        deletes = [(t,) for t, e in changes.items() if e is None]
        db = self.db
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_UNDO_CHANGED, ((head, token) for token in changes))
            db.execute(_UNDO_EXPIRED, (head, now))
            db.execute("DELETE FROM state WHERE expires_at <= ?", (now,))
            db.executemany(_UPSERT, upserts)
            db.executemany("DELETE FROM state WHERE key = ?", deletes)
            db.execute("INSERT INTO commits VALUES (?, ?)", (head, position))
            db.execute("DELETE FROM undo WHERE commit_id <= ?", (self.durable,))
            db.execute("DELETE FROM commits WHERE id <= ?", (self.durable,))
            self._set_head(head, position)
        self.head, self.position = head, position

    def reconcile(self, commit: int, position: int) -> None:
        """Bring the database to the checkpoint's ``commit``, undoing any commit after it.

        Raises:
            StateStoreError: The database is missing although the checkpoint
                expects a commit, behind the checkpoint, or ahead of it beyond its
                undo records.
        """
        where = f"{self.path} (partition {self.partition!r})"
        if self.created and commit > 0:
            raise StateStoreError(
                where,
                f"is missing, but the checkpoint expects its commit {commit} (position "
                f"{position}): it was deleted or moved; put it back, or start the pipeline "
                "over (riprap checkpoint reset --wipe, then delete the store's directory)",
            )
        if self.head < commit:
            raise StateStoreError(
                where,
                f"holds commit {self.head} (position {self.position}), behind the checkpoint's "
                f"commit {commit} (position {position}): it was rolled back, replaced by an "
                "older copy, or lost its -wal file; put the newer copy back, or start over",
            )
        if self.head > commit:
            self._roll_back(where, commit, position)
        self.durable = commit

    def _roll_back(self, where: str, commit: int, position: int) -> None:
        """Undo every commit after ``commit``, newest first, in one transaction."""
        db = self.db
        kept = db.execute("SELECT COUNT(*), MIN(id) FROM commits WHERE id > ?", (commit,))
        count, first = kept.fetchone()
        if count != self.head - commit or (count and first != commit + 1):
            raise StateStoreError(
                where,
                f"holds commit {self.head}, ahead of the checkpoint's commit {commit}, and "
                "no longer has the undo records to go back: the checkpoint was rolled back "
                "or wiped; restore the matching checkpoint, or start over",
            )
        with db:
            db.execute("BEGIN IMMEDIATE")
            for undone in range(self.head, commit, -1):
                rows = db.execute(
                    "SELECT key, value, expires_at FROM undo WHERE commit_id = ?", (undone,)
                ).fetchall()
                db.executemany(_UPSERT, [row for row in rows if row[1] is not None])
                db.executemany(
                    "DELETE FROM state WHERE key = ?", [(row[0],) for row in rows if row[1] is None]
                )
            db.execute("DELETE FROM undo WHERE commit_id > ?", (commit,))
            db.execute("DELETE FROM commits WHERE id > ?", (commit,))
            self._set_head(commit, position)
        log.info(
            "keyed state store %s was ahead of the checkpoint: undid commits %d to %d",
            where,
            commit + 1,
            self.head,
        )
        self.head, self.position = commit, position

    # -- as a changelog's local copy ------------------------------------------------

    def local(self) -> tuple[int, int] | None:
        """The changelog offset and position this copy matches, unless too old to trust.

        A copy older than :data:`LOCAL_COPY_MAX_AGE` is not offered: the changelog
        may have dropped the deletes it missed since (Kafka keeps a compacted
        topic's tombstones for ``delete.retention.ms``, a day by default).
        """
        copy = self.copy
        if copy is None or time.time() - copy[2] > LOCAL_COPY_MAX_AGE:
            return None
        return copy[0], copy[1]

    def expire(self, now: float) -> list[str]:
        """Mark the values expired at ``now`` deleted (pending); their tokens."""
        pending = self.pending
        rows = self.db.execute("SELECT key FROM state WHERE expires_at <= ?", (now,))
        expired = [token for (token,) in rows.fetchall() if token not in pending]
        expired += [
            t for t, e in pending.items() if e is not None and e[1] is not None and e[1] <= now
        ]
        for token in expired:
            pending[token] = None
        return expired

    def write_pending(self, offset: int | None, position: int) -> None:
        """The changelog has the pending changes up to ``offset``: write them, one transaction.

        Runs in a worker thread, on a connection of its own (WAL: the loop's
        reads go on meanwhile); the pending changes stay readable until it is
        committed. No cut changes them meanwhile: the checkpoint waits for this.
        """
        if self.writer is None:
            self.writer = _connect(self.path)
            self.connections.append(self.writer)
        self._write(self.pending, complete=False, offset=offset, position=position, db=self.writer)
        self.pending = {}

    def restore(
        self,
        values: Mapping[str, Entry],
        *,
        complete: bool,
        offset: int | None,
        position: int | None,
    ) -> None:
        """Take what the changelog restored: the whole state, or the changes since this copy."""
        self.pending = {}
        self._write(values, complete=complete, offset=offset, position=position)

    def _write(
        self,
        values: Mapping[str, Entry],
        *,
        complete: bool,
        offset: int | None,
        position: int | None,
        db: sqlite3.Connection | None = None,
    ) -> None:
        upserts = [(t, e[0], e[1]) for t, e in values.items() if e is not None]
        deletes = [(t,) for t, e in values.items() if e is None]
        at = time.time()
        db = db or self.db
        with db:
            db.execute("BEGIN IMMEDIATE")
            if complete:
                db.execute("DELETE FROM state")
                db.execute("DELETE FROM undo")
                db.execute("DELETE FROM commits")
            db.executemany(_UPSERT, upserts)
            db.executemany("DELETE FROM state WHERE key = ?", deletes)
            if offset is not None and position is not None:
                db.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    (
                        (_COPY_OFFSET, str(offset)),
                        (_COPY_POSITION, str(position)),
                        (_COPY_AT, repr(at)),
                    ),
                )
        if offset is not None and position is not None:
            self.copy = (offset, position, at)

    def _set_head(self, head: int, position: int) -> None:
        self.db.executemany(
            "UPDATE meta SET value = ? WHERE name = ?",
            ((str(head), "head"), (str(position), "position")),
        )

    def close(self) -> None:
        _close_all(self.connections)


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to ``path``: WAL, every commit synced."""
    # isolation_level=None: no implicit transactions; every commit BEGINs its own.
    db = sqlite3.connect(path, timeout=_LOCK_WAIT, isolation_level=None, check_same_thread=False)
    use_wal(db, _LOCK_WAIT)
    db.execute("PRAGMA synchronous = FULL")
    return db


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for db in connections:
        db.close()
