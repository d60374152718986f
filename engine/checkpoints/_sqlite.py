"""The SQLite checkpoint backend, riprap's default: one row per pipeline, one transaction per call.

The table keeps the latest claim and the latest snapshot of each pipeline; a
second table keeps the last ``history`` snapshots of each, written in the
same transaction as the latest. ``claim`` and ``save`` each run in one ``BEGIN IMMEDIATE``
transaction, which takes SQLite's write lock before reading, so reading the
claim, checking it and writing are one step for every process sharing the
file (I5). WAL mode lets loads run beside a writer; ``synchronous=FULL``
fsyncs the log on every commit, so a saved checkpoint survives a power cut.

Integrity (I5): the highest generation saved per pipeline is also recorded
outside the database, in ``<database>.generation.json`` beside it, once the
transaction that saved it has committed. A database that loses its last
transactions (a deleted, truncated or overwritten ``-wal`` file) or is
replaced by an older copy is then behind the record, and a claim refuses it
with :class:`~riprap.checkpoints.CheckpointIntegrityError`. The record is
updated under SQLite's own write lock (an empty ``BEGIN IMMEDIATE``
transaction), so writers in several processes never lower it.

The database file is created with mode 0600 (SQLite gives its ``-wal`` and
``-shm`` files the database's mode) and so is the record.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, final

import anyio.to_thread
import orjson

from riprap._core.errors import CheckpointError, CheckpointIntegrityError
from riprap._core.files import make_directory, replace_file
from riprap._core.sqlite_wal import use_wal
from riprap.checkpoints._history import DEFAULT_HISTORY, check_history, stale_generations
from riprap.checkpoints._integrity import (
    CheckpointStatus,
    check_generation,
    corrupt_record,
    is_generation,
)
from riprap.checkpoints._memory import check_save, decode, encode
from riprap.checkpoints._snapshot import Checkpoint, Claim
from riprap.checkpoints._threaded import ThreadedCheckpoints

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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

_HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS riprap_checkpoint_history (
    pipeline    TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    snapshot    BLOB NOT NULL,     -- Checkpoint.to_json(), as saved
    PRIMARY KEY (pipeline, generation)
)
"""

_RECORD_SUFFIX = ".generation.json"
_RECORD_VERSION = 1
_DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
"""SQLite error codes that mean the database file itself is damaged."""


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
            Its generation record is ``<path>.generation.json`` (none for ``":memory:"``).
        timeout: Seconds to wait for another process's write lock before giving up.
        history: Snapshots kept per pipeline, the latest included (see :meth:`history`).
    """

    __slots__ = ("_connection", "_history", "_lock", "_timeout", "path")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self.path = os.fspath(path)
        self._timeout = timeout
        self._history = check_history(history)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        """The database file, as ``riprap checkpoint`` takes it."""
        return self.path

    @property
    def record_path(self) -> Path | None:
        """Where the generations are recorded, beside the database (``None`` in memory)."""
        if self.path == ":memory:":
            return None
        return Path(self.path + _RECORD_SUFFIX)

    def _claim_sync(self, pipeline: str, owner: str) -> Claim:
        with self._located(pipeline), self._transaction("BEGIN IMMEDIATE") as db:
            recorded = self._recorded(pipeline)
            row = self._row(db, pipeline)
            latest = self._trusted(db, pipeline, row, recorded)
            epoch = 0 if row is None else row.epoch
            if latest is not None:  # never reuse an epoch that already wrote a snapshot
                epoch = max(epoch, latest.epoch)
            db.execute(
                "INSERT INTO riprap_checkpoints (pipeline, epoch, owner) VALUES (?, ?, ?)"
                " ON CONFLICT (pipeline) DO UPDATE SET epoch = excluded.epoch,"
                " owner = excluded.owner",
                (pipeline, epoch + 1, owner),
            )
        if latest is not None and latest.generation > recorded:
            # The last save died before recording its generation (or the record was lost).
            self._record(pipeline, latest.generation)
        return Claim(epoch + 1, owner, latest)

    def _save_sync(self, checkpoint: Checkpoint, data: bytes) -> None:
        with self._transaction("BEGIN IMMEDIATE") as db:
            row = self._row(db, checkpoint.pipeline)
            check_save(
                checkpoint,
                epoch=row.epoch if row else 0,
                owner=row.owner if row else None,
                saved=row.saved if row else None,
                recorded=self._recorded(checkpoint.pipeline),
            )
            db.execute(
                "UPDATE riprap_checkpoints SET saved_epoch = ?, saved_seq = ?, snapshot = ?"
                " WHERE pipeline = ?",
                (checkpoint.epoch, checkpoint.seq, data, checkpoint.pipeline),
            )
            self._keep(db, checkpoint.pipeline, checkpoint.generation, data)
        # Only once the snapshot is durable: the record must never be ahead of the store.
        self._record(checkpoint.pipeline, checkpoint.generation)

    def _load_sync(self, pipeline: str) -> Checkpoint | None:
        with self._located(pipeline):
            recorded = self._recorded(pipeline)  # before the database: see the module docstring
            with self._transaction("BEGIN") as db:
                return self._trusted(db, pipeline, self._row(db, pipeline), recorded)

    async def history(self, pipeline: str) -> list[Checkpoint]:
        """The kept snapshots of ``pipeline``, newest first, each verified."""
        return await anyio.to_thread.run_sync(self._history_sync, pipeline)

    def _history_sync(self, pipeline: str) -> list[Checkpoint]:
        if self._missing():  # looking must not create the database
            return []
        with self._transaction("BEGIN") as db:
            rows = db.execute(
                "SELECT generation, snapshot FROM riprap_checkpoint_history WHERE pipeline = ?"
                " ORDER BY generation DESC",
                (pipeline,),
            ).fetchall()
        where = f"{self.path} (pipeline {pipeline!r}, kept generation {{}})"
        return [decode(data, where=where.format(g), pipeline=pipeline) for g, data in rows]

    def _keep(
        self,
        db: sqlite3.Connection,
        pipeline: str,
        generation: int,
        data: bytes,
        *,
        prune: bool = True,
    ) -> None:
        """Keep ``data`` as generation ``generation``; thin the older kept ones.

        An operator's overwrite (``prune=False``) drops nothing: the tool may not
        know the ``history`` the pipeline's runs keep.
        """
        db.execute(
            "INSERT OR REPLACE INTO riprap_checkpoint_history (pipeline, generation, snapshot)"
            " VALUES (?, ?, ?)",
            (pipeline, generation, data),
        )
        if not prune:
            return
        kept = db.execute(
            "SELECT generation FROM riprap_checkpoint_history WHERE pipeline = ?", (pipeline,)
        ).fetchall()
        db.executemany(
            "DELETE FROM riprap_checkpoint_history WHERE pipeline = ? AND generation = ?",
            [(pipeline, g) for g in stale_generations((g for (g,) in kept), self._history)],
        )

    def _close_sync(self) -> None:
        """Close the connection; idempotent, and a later call opens a new one."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _pipelines_sync(self) -> list[str]:
        try:
            recorded = set(self._generations())
        except CheckpointError:
            recorded = set()
        if self._missing():
            return sorted(recorded)
        with self._transaction("BEGIN") as db:
            rows = {name for (name,) in db.execute("SELECT pipeline FROM riprap_checkpoints")}
        return sorted({str(name) for name in rows} | recorded)

    def _status_sync(self, pipeline: str) -> CheckpointStatus:
        if self._missing():  # looking must not create the database
            return CheckpointStatus.examine(
                pipeline,
                where=self._where(pipeline),
                record=str(self.record_path),
                store=self._store(),
                recorded=lambda: self._recorded(pipeline),
                claim=lambda: (0, None),
                snapshot=lambda: None,
            )
        try:
            with self._located(pipeline), self._transaction("BEGIN") as db:
                return self._examine(db, pipeline)
        except CheckpointIntegrityError as exc:  # the database itself is damaged
            return CheckpointStatus(
                pipeline=pipeline,
                where=self._where(pipeline),
                record=str(self.record_path),
                recorded=exc.expected or 0,
                epoch=0,
                owner=None,
                checkpoint=None,
                problem=exc,
            )

    def _examine(self, db: sqlite3.Connection, pipeline: str) -> CheckpointStatus:
        def claim() -> tuple[int, str | None]:
            row = self._row(db, pipeline)
            return (row.epoch, row.owner) if row is not None else (0, None)

        return CheckpointStatus.examine(
            pipeline,
            where=self._where(pipeline),
            record=str(self.record_path),
            store=self._store(),
            recorded=lambda: self._recorded(pipeline),
            claim=claim,
            snapshot=lambda: self._snapshot(db, pipeline, self._row(db, pipeline)),
        )

    def _overwrite_sync(
        self,
        pipeline: str,
        owner: str,
        build: Callable[[CheckpointStatus, int], Checkpoint],
    ) -> Checkpoint:
        with self._located(pipeline), self._transaction("BEGIN IMMEDIATE") as db:
            status = self._examine(db, pipeline)
            last = status.checkpoint.epoch if status.checkpoint is not None else 0
            epoch = max(status.epoch, last) + 1
            checkpoint = build(status, epoch)
            status.check_replacement(checkpoint, epoch=epoch, owner=owner)
            data = encode(checkpoint)
            db.execute(
                "INSERT INTO riprap_checkpoints"
                " (pipeline, epoch, owner, saved_epoch, saved_seq, snapshot)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline) DO UPDATE SET"
                " epoch = excluded.epoch, owner = excluded.owner,"
                " saved_epoch = excluded.saved_epoch, saved_seq = excluded.saved_seq,"
                " snapshot = excluded.snapshot",
                (pipeline, epoch, owner, epoch, checkpoint.seq, data),
            )
            self._keep(db, pipeline, checkpoint.generation, data, prune=False)
        self._record(pipeline, checkpoint.generation, repair=True)
        return checkpoint

    # -- the generation record -------------------------------------------------

    def _generations(self) -> dict[str, int]:
        """Every recorded generation, by pipeline; empty without a record."""
        path = self.record_path
        if path is None:
            return {}
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc}") from exc
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise corrupt_record(str(path), str(exc)) from exc
        if not isinstance(raw, dict) or raw.get("version") != _RECORD_VERSION:
            raise corrupt_record(str(path), "not a generation record of format version 1")
        generations = raw.get("generations")
        if not isinstance(generations, dict) or not all(
            isinstance(name, str) and is_generation(value) for name, value in generations.items()
        ):
            raise corrupt_record(str(path), "generations is not a mapping of pipeline to integer")
        return generations

    def _recorded(self, pipeline: str) -> int:
        """The generation recorded for ``pipeline``; 0 if none is."""
        return self._generations().get(pipeline, 0)

    def _record(self, pipeline: str, generation: int, *, repair: bool = False) -> None:
        """Raise the recorded generation of ``pipeline`` to ``generation``, never lowering it.

        Runs under SQLite's write lock (an empty ``BEGIN IMMEDIATE`` transaction),
        the one lock every process sharing the database already takes. With
        ``repair`` a corrupt record is replaced (other pipelines' entries are lost
        with it; their next save records them again).
        """
        path = self.record_path
        if path is None:
            return
        with self._transaction("BEGIN IMMEDIATE"):
            try:
                generations = self._generations()
            except CheckpointError:
                if not repair:
                    raise
                generations = {}
            if generations.get(pipeline, -1) >= generation:
                return
            generations[pipeline] = generation
            body = {"version": _RECORD_VERSION, "generations": dict(sorted(generations.items()))}
            try:
                replace_file(path, orjson.dumps(body))
            except OSError as exc:
                raise CheckpointError(
                    f"{path}: cannot record generation {generation} of pipeline {pipeline!r}"
                    f" (the checkpoint itself is saved): {exc}"
                ) from exc

    # -- rows and snapshots ----------------------------------------------------

    def _where(self, pipeline: str) -> str:
        return f"{self.path} (pipeline {pipeline!r})"

    def _missing(self) -> bool:
        """Whether the database file does not exist (and no connection holds it)."""
        return self._connection is None and self.path != ":memory:" and not Path(self.path).exists()

    def _store(self) -> str:
        return shlex.quote(self.location)

    @contextlib.contextmanager
    def _located(self, pipeline: str) -> Iterator[None]:
        """Add the recorded generation and the repair hint to damage found inside."""
        try:
            yield
        except CheckpointIntegrityError as exc:
            if exc.expected is not None:
                raise
            try:
                recorded = self._recorded(pipeline)
            except CheckpointError:
                recorded = 0
            raise exc.located(
                expected=recorded,
                record=str(self.record_path),
                store=self._store(),
                pipeline=pipeline,
            ) from exc

    def _trusted(
        self, db: sqlite3.Connection, pipeline: str, row: _Row | None, recorded: int
    ) -> Checkpoint | None:
        """The stored snapshot, refused if damaged, missing or older than ``recorded``."""
        latest = self._snapshot(db, pipeline, row)
        check_generation(
            latest,
            recorded,
            pipeline=pipeline,
            where=self._where(pipeline),
            record=str(self.record_path),
            store=self._store(),
        )
        return latest

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
        checkpoint = decode(data, where=self._where(pipeline), pipeline=pipeline)
        if (checkpoint.epoch, checkpoint.seq) != row.saved:
            raise self._corrupt(
                pipeline,
                f"snapshot (epoch, seq) {(checkpoint.epoch, checkpoint.seq)}"
                f" does not match the row's {row.saved}",
            )
        return checkpoint

    def _corrupt(self, pipeline: str, problem: str) -> CheckpointIntegrityError:
        return CheckpointIntegrityError(
            self._where(pipeline), f"corrupt row: {problem}", pipeline=pipeline, damaged=True
        )

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
                name = getattr(exc, "sqlite_errorname", "")
                if name.startswith(_DAMAGE):
                    raise CheckpointIntegrityError(
                        self.path,
                        f"the database is damaged ({exc}); move it aside with its -wal and"
                        " -shm files before repairing the checkpoint",
                        pipeline="",
                        damaged=True,
                    ) from exc
                raise CheckpointError(f"{self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        try:
            make_directory(Path(self.path).parent)
            if self.path != ":memory:":
                _create_private(self.path)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot create it: {exc}") from exc
        # isolation_level=None: no implicit transactions; every call BEGINs its own.
        db = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            use_wal(db, self._timeout)
            db.execute("PRAGMA synchronous = FULL")
            db.execute(_SCHEMA)
            db.execute(_HISTORY_SCHEMA)
        except BaseException:
            db.close()
            raise
        self._connection = db
        return db


def _create_private(path: str) -> None:
    """Create an empty database file with mode 0600 unless it exists (an empty file is valid).

    SQLite creates the ``-wal`` and ``-shm`` files with the database file's mode.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
