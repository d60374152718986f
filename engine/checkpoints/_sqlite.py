"""The SQLite checkpoint backend, riprap's default: one row per pipeline, one transaction per call.

The table keeps the latest claim and the latest snapshot of each pipeline (no
history). ``claim`` and ``save`` each run in one ``BEGIN IMMEDIATE``
transaction, which takes SQLite's write lock before reading, so reading the
claim, checking it and writing are one step for every process sharing the
file (I5). WAL mode lets loads run beside a writer; ``synchronous=FULL``
fsyncs the log on every commit, so a saved checkpoint survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, final

from riprap._core.errors import CheckpointError
from riprap._core.files import make_directory
from riprap.checkpoints._memory import check_save, decode
from riprap.checkpoints._snapshot import Checkpoint, Claim
from riprap.checkpoints._threaded import ThreadedCheckpoints

if TYPE_CHECKING:
    from collections.abc import Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS riprap_checkpoints (
    pipeline    TEXT PRIMARY KEY NOT NULL,
    epoch       INTEGER NOT NULL,  -- the latest claimed epoch
    owner       TEXT NOT NULL,     -- who claimed it
    saved_epoch INTEGER,           -- (epoch, seq) of the stored snapshot, so that a
    saved_seq   INTEGER,           -- save need not read and parse the snapshot
    snapshot    BLOB               -- Checkpoint.to_json(); NULL until the first save
)
"""


@dataclass(frozen=True, slots=True)
class _Row:
    epoch: int
    owner: str
    saved: tuple[int, int] | None


@final
class SqliteCheckpoints(ThreadedCheckpoints):
    """Checkpoints in an SQLite database file (created, with its directory, on first use).

    One connection per backend, opened lazily in a worker thread and guarded by
    a lock: opening per call would redo the open, pragmas and schema check on
    every save, while calls on one backend are rare and serial anyway (I4).

    Args:
        path: The database file; several pipelines and processes may share it.
        timeout: Seconds to wait for another process's write lock before giving up.
    """

    __slots__ = ("_connection", "_lock", "_timeout", "path")

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self._timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _claim_sync(self, pipeline: str, owner: str) -> Claim:
        with self._transaction("BEGIN IMMEDIATE") as db:
            row = self._row(db, pipeline)
            latest = self._snapshot(db, pipeline, row)
            epoch = 0 if row is None else row.epoch
            if latest is not None:  # never reuse an epoch that already wrote a snapshot
                epoch = max(epoch, latest.epoch)
            db.execute(
                "INSERT INTO riprap_checkpoints (pipeline, epoch, owner) VALUES (?, ?, ?)"
                " ON CONFLICT (pipeline) DO UPDATE SET epoch = excluded.epoch,"
                " owner = excluded.owner",
                (pipeline, epoch + 1, owner),
            )
        return Claim(epoch + 1, owner, latest)

    def _save_sync(self, checkpoint: Checkpoint, data: bytes) -> None:
        with self._transaction("BEGIN IMMEDIATE") as db:
            row = self._row(db, checkpoint.pipeline)
            check_save(
                checkpoint,
                epoch=row.epoch if row else 0,
                owner=row.owner if row else None,
                saved=row.saved if row else None,
            )
            db.execute(
                "UPDATE riprap_checkpoints SET saved_epoch = ?, saved_seq = ?, snapshot = ?"
                " WHERE pipeline = ?",
                (checkpoint.epoch, checkpoint.seq, data, checkpoint.pipeline),
            )

    def _load_sync(self, pipeline: str) -> Checkpoint | None:
        with self._transaction("BEGIN") as db:
            return self._snapshot(db, pipeline, self._row(db, pipeline))

    def _close_sync(self) -> None:
        """Close the connection; idempotent, and a later call opens a new one."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _row(self, db: sqlite3.Connection, pipeline: str) -> _Row | None:
        """The pipeline's claim and snapshot version, checked; ``None`` if never claimed."""
        found = db.execute(
            "SELECT epoch, owner, saved_epoch, saved_seq FROM riprap_checkpoints"
            " WHERE pipeline = ?",
            (pipeline,),
        ).fetchone()
        if found is None:
            return None
        epoch, owner, saved_epoch, saved_seq = found
        if not isinstance(epoch, int) or epoch < 1:
            raise self._corrupt(pipeline, f"epoch {epoch!r} is not a positive integer")
        if not isinstance(owner, str):
            raise self._corrupt(pipeline, f"owner {owner!r} is not a string")
        if saved_epoch is None and saved_seq is None:
            return _Row(epoch, owner, None)
        if not isinstance(saved_epoch, int) or not isinstance(saved_seq, int):
            raise self._corrupt(
                pipeline, f"saved (epoch, seq) {(saved_epoch, saved_seq)!r} are not integers"
            )
        return _Row(epoch, owner, (saved_epoch, saved_seq))

    def _snapshot(
        self, db: sqlite3.Connection, pipeline: str, row: _Row | None
    ) -> Checkpoint | None:
        """The stored snapshot, checked against the row that describes it."""
        if row is None or row.saved is None:
            return None
        (data,) = db.execute(
            "SELECT snapshot FROM riprap_checkpoints WHERE pipeline = ?", (pipeline,)
        ).fetchone()
        if not isinstance(data, bytes):
            raise self._corrupt(pipeline, f"snapshot is {type(data).__name__}, not a blob")
        checkpoint = decode(data, where=f"{self.path} (pipeline {pipeline!r})", pipeline=pipeline)
        if (checkpoint.epoch, checkpoint.seq) != row.saved:
            raise self._corrupt(
                pipeline,
                f"snapshot (epoch, seq) {(checkpoint.epoch, checkpoint.seq)}"
                f" does not match the row's {row.saved}",
            )
        return checkpoint

    def _corrupt(self, pipeline: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path} (pipeline {pipeline!r}): corrupt row: {problem}")

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """One transaction on the connection (blocking: worker threads only)."""
        with self._lock:
            try:
                db = self._connect()
                db.execute(begin)
                try:
                    yield db
                except BaseException:
                    db.rollback()
                    raise
                db.commit()
            except sqlite3.Error as exc:
                raise CheckpointError(f"{self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        try:
            make_directory(Path(self.path).parent)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot create its directory: {exc}") from exc
        # isolation_level=None: no implicit transactions; every call BEGINs its own.
        db = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        self._connection = db
        return db
