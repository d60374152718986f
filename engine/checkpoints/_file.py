"""The file checkpoint backend: a directory of JSON files, safe across processes.

Per pipeline (name percent-encoded) the directory holds three files:

* ``<name>.checkpoint.json``: the latest snapshot, exactly :meth:`Checkpoint.to_json`;
* ``<name>.claim.json``: the latest claim, ``{"version", "pipeline", "epoch", "owner"}``;
* ``<name>.lock``: an empty file; an exclusive ``flock`` on it serialises every
  claim and save of that pipeline across threads and processes, so reading the
  claim, checking it and writing happen as one step (I5). It is never deleted:
  deleting a lock file lets two writers lock different inodes.

Every write is atomic and durable: a temp file in the same directory is
written, flushed and fsynced, renamed onto the target, and the directory is
fsynced so that the rename itself survives a power cut. Loads take no lock;
a rename is atomic, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, final
from urllib.parse import quote

import orjson

from riprap._core.errors import CheckpointError
from riprap._core.files import fsync_directory, make_directory
from riprap.checkpoints._memory import check_save, claim_problem, decode
from riprap.checkpoints._snapshot import Checkpoint, Claim
from riprap.checkpoints._threaded import ThreadedCheckpoints

if TYPE_CHECKING:
    from collections.abc import Iterator


@final
class FileCheckpoints(ThreadedCheckpoints):
    """Checkpoints as JSON files in ``directory`` (created on first claim); POSIX only.

    Args:
        directory: Where the files live; several pipelines may share it.
        lock_timeout: Seconds to wait for another writer's lock before giving up.
    """

    __slots__ = ("_lock_timeout", "directory")

    def __init__(self, directory: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.directory = Path(directory)
        self._lock_timeout = lock_timeout

    def _claim_sync(self, pipeline: str, owner: str) -> Claim:
        with self._locked(pipeline):
            epoch, _ = self._read_claim(pipeline)
            latest = self._read_snapshot(pipeline)
            # A lost claim file must not reuse an epoch that already wrote a snapshot.
            epoch = max(epoch, latest.epoch if latest is not None else 0) + 1
            record = {"version": 1, "pipeline": pipeline, "epoch": epoch, "owner": owner}
            self._write(self._path(pipeline, ".claim.json"), orjson.dumps(record))
        return Claim(epoch, owner, latest)

    def _save_sync(self, checkpoint: Checkpoint, data: bytes) -> None:
        pipeline = checkpoint.pipeline
        with self._locked(pipeline):
            epoch, owner = self._read_claim(pipeline)
            stored = self._read_snapshot(pipeline)
            saved = (stored.epoch, stored.seq) if stored is not None else None
            check_save(checkpoint, epoch=epoch, owner=owner, saved=saved)
            self._write(self._path(pipeline, ".checkpoint.json"), data)

    def _load_sync(self, pipeline: str) -> Checkpoint | None:
        return self._read_snapshot(pipeline)

    def _close_sync(self) -> None:
        """Nothing to release: no file stays open between calls."""

    def _path(self, pipeline: str, suffix: str) -> Path:
        # Percent-encoding is injective and leaves no "/" in the name; the suffixes
        # differ before ".json", so no pipeline's file can be another's.
        return self.directory / (quote(pipeline, safe="") + suffix)

    def _read_snapshot(self, pipeline: str) -> Checkpoint | None:
        path = self._path(pipeline, ".checkpoint.json")
        data = _read(path)
        return None if data is None else decode(data, where=str(path), pipeline=pipeline)

    def _read_claim(self, pipeline: str) -> tuple[int, str | None]:
        """``(epoch, owner)`` of the latest claim; ``(0, None)`` if there is none."""
        path = self._path(pipeline, ".claim.json")
        data = _read(path)
        if data is None:
            return 0, None
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: corrupt claim: {exc}") from exc
        problem = claim_problem(raw, pipeline)
        if problem is not None:
            raise CheckpointError(f"{path}: corrupt claim: {problem}")
        epoch: int = raw["epoch"]
        owner: str = raw["owner"]
        return epoch, owner

    @contextlib.contextmanager
    def _locked(self, pipeline: str) -> Iterator[None]:
        """Hold the pipeline's exclusive lock (blocking: worker threads only)."""
        # fcntl is POSIX-only; importing it here keeps `import riprap` working elsewhere.
        import fcntl

        _make_directory(self.directory)
        path = self._path(pipeline, ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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

    def _write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` by ``data`` atomically and durably (temp, fsync, rename, fsync dir)."""
        try:
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot create a temp file: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise CheckpointError(f"{path}: cannot write: {exc}") from exc
        try:
            fsync_directory(path.parent)
        except OSError as exc:
            raise CheckpointError(f"{path}: written, but not yet durable: {exc}") from exc


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
