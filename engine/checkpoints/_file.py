"""The file checkpoint backend: a directory of JSON files, safe across processes.

Per pipeline (name percent-encoded) the directory holds four files, each with
mode 0600:

* ``<name>.checkpoint.json``: the latest snapshot, exactly :meth:`Checkpoint.to_json`
  (canonical JSON with its checksum);
* ``<name>.claim.json``: the latest claim, ``{"version", "pipeline", "epoch", "owner"}``;
* ``<name>.generation.json``: the highest generation saved,
  ``{"version", "pipeline", "generation"}``, written after the snapshot it
  describes is durable. A snapshot file replaced by an older copy (or
  deleted) is then behind the record, and a claim refuses it;
* ``<name>.history/<generation:020d>.json`` (directory mode 0700): the last
  ``history`` snapshots saved, the latest included, each a hard link to the snapshot file as it was
  written (a copy where links are not supported), older ones deleted;
* ``<name>.lock``: an empty file; an exclusive ``flock`` on it serialises every
  claim and save of that pipeline across threads and processes, so reading the
  claim, checking it and writing happen as one step (I5). It is never deleted:
  deleting a lock file lets two writers lock different inodes.

Every write is atomic and durable (:func:`riprap._core.files.replace_file`):
a temp file in the same directory is written, flushed and fsynced, renamed
onto the target, and the directory is fsynced so that the rename itself
survives a power cut. Loads take no lock; a rename is atomic, so a reader sees
the old file or the new one. A reader reads the generation record before the
snapshot, so a save between the two reads cannot look like a rollback.

What the record cannot catch: it lives in the same directory, so a directory
deleted or restored from a copy as a whole looks like a first start or an
older, consistent store.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, final
from urllib.parse import quote, unquote

import anyio.to_thread
import orjson

from riprap._core.errors import CheckpointError, CheckpointIntegrityError
from riprap._core.files import fsync_directory, make_directory, replace_file
from riprap.checkpoints._history import DEFAULT_HISTORY, check_history, stale_generations
from riprap.checkpoints._integrity import (
    CheckpointStatus,
    check_generation,
    decode_generation,
    encode_generation,
)
from riprap.checkpoints._memory import check_save, claim_problem, decode, encode
from riprap.checkpoints._snapshot import Checkpoint, Claim
from riprap.checkpoints._threaded import ThreadedCheckpoints

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_SNAPSHOT = ".checkpoint.json"
_CLAIM = ".claim.json"
_RECORD = ".generation.json"
_LOCK = ".lock"
_HISTORY = ".history"


@final
class FileCheckpoints(ThreadedCheckpoints):
    """Checkpoints as JSON files in ``directory`` (created on first claim); POSIX only.

    Args:
        directory: Where the files live; several pipelines may share it.
        lock_timeout: Seconds to wait for another writer's lock before giving up.
        history: Snapshots kept per pipeline, the latest included (see :meth:`history`).
    """

    __slots__ = ("_history", "_lock_timeout", "directory")

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        lock_timeout: float = 30.0,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self.directory = Path(directory)
        self._lock_timeout = lock_timeout
        self._history = check_history(history)

    @property
    def location(self) -> str:
        """The directory, as ``riprap checkpoint`` takes it."""
        return str(self.directory)

    def _claim_sync(self, pipeline: str, owner: str) -> Claim:
        with self._locked(pipeline):
            recorded = self._recorded(pipeline)
            epoch, _ = self._read_claim(pipeline)
            latest = self._trusted(pipeline, recorded)
            # A lost claim file must not reuse an epoch that already wrote a snapshot.
            epoch = max(epoch, latest.epoch if latest is not None else 0) + 1
            record = {"version": 1, "pipeline": pipeline, "epoch": epoch, "owner": owner}
            self._write(self._path(pipeline, _CLAIM), orjson.dumps(record))
            if latest is not None and latest.generation > recorded:
                # The last save died before recording its generation (or the record was lost).
                self._record(pipeline, latest.generation)
        return Claim(epoch, owner, latest)

    def _save_sync(self, checkpoint: Checkpoint, data: bytes) -> None:
        pipeline = checkpoint.pipeline
        with self._locked(pipeline):
            epoch, owner = self._read_claim(pipeline)
            stored = self._read_snapshot(pipeline)
            saved = (stored.epoch, stored.seq) if stored is not None else None
            recorded = self._recorded(pipeline)
            check_save(checkpoint, epoch=epoch, owner=owner, saved=saved, recorded=recorded)
            self._write(self._path(pipeline, _SNAPSHOT), data)
            self._keep(pipeline, checkpoint.generation, data)
            if checkpoint.generation > recorded:
                self._record(pipeline, checkpoint.generation)

    def _load_sync(self, pipeline: str) -> Checkpoint | None:
        return self._trusted(pipeline, self._recorded(pipeline))

    async def history(self, pipeline: str) -> list[Checkpoint]:
        """The kept snapshots of ``pipeline``, newest first, each verified."""
        return await anyio.to_thread.run_sync(self._history_sync, pipeline)

    def _history_sync(self, pipeline: str) -> list[Checkpoint]:
        folder = self._path(pipeline, _HISTORY)
        kept = []
        for name in reversed(self._kept_names(folder)):
            data = _read(folder / name)
            if data is not None:  # pruned by a save since the listing
                kept.append(decode(data, where=str(folder / name), pipeline=pipeline))
        return kept

    def _keep(self, pipeline: str, generation: int, data: bytes, *, prune: bool = True) -> None:
        """Keep the snapshot just written as generation ``generation``; thin the older kept ones.

        An operator's overwrite (``prune=False``) drops nothing: the tool may not
        know the ``history`` the pipeline's runs keep.
        """
        folder = self._path(pipeline, _HISTORY)
        if not folder.is_dir():
            _make_directory(folder)
            folder.chmod(0o700)  # the snapshots are as private as the latest one
        target = folder / f"{generation:020d}.json"
        try:
            target.unlink(missing_ok=True)
            # Each write of the snapshot is a new file (temp + rename): a link keeps this one.
            os.link(self._path(pipeline, _SNAPSHOT), target)
            fsync_directory(folder)
        except OSError:
            self._write(target, data)
        if not prune:
            return
        try:
            kept = [int(name[:-5]) for name in self._kept_names(folder)]
            for stale in stale_generations(kept, self._history):
                (folder / f"{stale:020d}.json").unlink(missing_ok=True)
        except OSError as exc:
            raise CheckpointError(f"{folder}: cannot drop old snapshots: {exc}") from exc

    @staticmethod
    def _kept_names(folder: Path) -> list[str]:
        """The kept snapshots' file names, oldest first."""
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CheckpointError(f"{folder}: cannot list: {exc}") from exc
        return sorted(n for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _close_sync(self) -> None:
        """Nothing to release: no file stays open between calls."""

    def _pipelines_sync(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CheckpointError(f"{self.directory}: cannot list: {exc}") from exc
        found = {
            unquote(name.removesuffix(suffix))
            for name in names
            for suffix in (_SNAPSHOT, _CLAIM, _RECORD)
            if name.endswith(suffix) and len(name) > len(suffix)
        }
        return sorted(found)

    def _status_sync(self, pipeline: str) -> CheckpointStatus:
        return CheckpointStatus.examine(
            pipeline,
            where=str(self._path(pipeline, _SNAPSHOT)),
            record=str(self._path(pipeline, _RECORD)),
            store=self._store(),
            recorded=lambda: self._recorded(pipeline),
            claim=lambda: self._read_claim(pipeline),
            snapshot=lambda: self._read_snapshot(pipeline),
        )

    def _overwrite_sync(
        self,
        pipeline: str,
        owner: str,
        build: Callable[[CheckpointStatus, int], Checkpoint],
    ) -> Checkpoint:
        with self._locked(pipeline):
            status = self._status_sync(pipeline)
            last = status.checkpoint.epoch if status.checkpoint is not None else 0
            epoch = max(status.epoch, last) + 1
            checkpoint = build(status, epoch)
            status.check_replacement(checkpoint, epoch=epoch, owner=owner)
            data = encode(checkpoint)
            # The claim first: a run still using the store is fenced out from here on.
            claim = {"version": 1, "pipeline": pipeline, "epoch": epoch, "owner": owner}
            self._write(self._path(pipeline, _CLAIM), orjson.dumps(claim))
            self._write(self._path(pipeline, _SNAPSHOT), data)
            self._keep(pipeline, checkpoint.generation, data, prune=False)
            # Replaces a corrupt record too: the new generation is above every known one.
            self._write(
                self._path(pipeline, _RECORD), encode_generation(pipeline, checkpoint.generation)
            )
        return checkpoint

    def _path(self, pipeline: str, suffix: str) -> Path:
        # Percent-encoding is injective and leaves no "/" in the name; the suffixes
        # differ before ".json", so no pipeline's file can be another's.
        return self.directory / (quote(pipeline, safe="") + suffix)

    def _store(self) -> str:
        return shlex.quote(self.location)

    def _trusted(self, pipeline: str, recorded: int) -> Checkpoint | None:
        """The stored snapshot, refused if damaged, missing or older than ``recorded``."""
        record = str(self._path(pipeline, _RECORD))
        try:
            latest = self._read_snapshot(pipeline)
        except CheckpointIntegrityError as exc:
            raise exc.located(expected=recorded, record=record, store=self._store()) from exc
        check_generation(
            latest,
            recorded,
            pipeline=pipeline,
            where=str(self._path(pipeline, _SNAPSHOT)),
            record=record,
            store=self._store(),
        )
        return latest

    def _read_snapshot(self, pipeline: str) -> Checkpoint | None:
        path = self._path(pipeline, _SNAPSHOT)
        data = _read(path)
        return None if data is None else decode(data, where=str(path), pipeline=pipeline)

    def _recorded(self, pipeline: str) -> int:
        """The generation recorded for ``pipeline``; 0 if none is."""
        path = self._path(pipeline, _RECORD)
        data = _read(path)
        return 0 if data is None else decode_generation(data, where=str(path), pipeline=pipeline)

    def _record(self, pipeline: str, generation: int) -> None:
        """Record ``generation`` (the lock is held and it is above the recorded one)."""
        self._write(self._path(pipeline, _RECORD), encode_generation(pipeline, generation))

    def _read_claim(self, pipeline: str) -> tuple[int, str | None]:
        """``(epoch, owner)`` of the latest claim; ``(0, None)`` if there is none."""
        path = self._path(pipeline, _CLAIM)
        data = _read(path)
        if data is None:
            return 0, None
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._corrupt_claim(path, pipeline, str(exc)) from exc
        problem = claim_problem(raw, pipeline)
        if problem is not None:
            raise self._corrupt_claim(path, pipeline, problem)
        epoch: int = raw["epoch"]
        owner: str = raw["owner"]
        return epoch, owner

    def _corrupt_claim(self, path: Path, pipeline: str, problem: str) -> CheckpointError:
        target = f"{self._store()} --pipeline {shlex.quote(pipeline)}"
        return CheckpointError(
            f"{path}: corrupt claim: {problem}; check the store with"
            f" `riprap checkpoint show {target}`; `riprap checkpoint reset {target} --yes`"
            " rewrites the claim"
        )

    @contextlib.contextmanager
    def _locked(self, pipeline: str) -> Iterator[None]:
        """Hold the pipeline's exclusive lock (blocking: worker threads only)."""
        # fcntl is POSIX-only; importing it here keeps `import riprap` working elsewhere.
        import fcntl

        _make_directory(self.directory)
        path = self._path(pipeline, _LOCK)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot open lock file: {exc}") from exc
        try:
            # flock, not lockf: flock locks belong to the open file, so two backends
            # in one process exclude each other too; lockf locks belong to the process.
            deadline = time.monotonic() + self._lock_timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CheckpointError(
                            f"{path}: still locked by another writer after {self._lock_timeout} s"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Replace ``path`` by ``data`` atomically and durably, mode 0600."""
        try:
            replace_file(path, data)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot write: {exc}") from exc


def _read(path: Path) -> bytes | None:
    """The file's bytes, or ``None`` if it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from exc


def _make_directory(directory: Path) -> None:
    """Create ``directory`` if needed, durably; a failure is a :class:`CheckpointError`."""
    try:
        make_directory(directory)
    except OSError as exc:
        raise CheckpointError(f"{directory}: cannot create checkpoint directory: {exc}") from exc
