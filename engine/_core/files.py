"""Durable file helpers: make a directory entry survive a power cut.

A rename or a new file is durable only once the directory that holds its entry
is fsynced too; every store that writes files (file checkpoints, JSON Lines
dead letters, the file sinks) goes through these functions for that.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush ``directory``'s entries (new files, renames) to disk; a no-op off POSIX.

    Only POSIX lets a directory be opened and fsynced; elsewhere the file
    system gives no such handle, so there is nothing more to do.

    Raises:
        OSError: The directory cannot be opened or flushed.
    """
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: str | os.PathLike[str]) -> None:
    """Create ``directory`` (and its parents) if needed, durably: its parent's entry is fsynced.

    Raises:
        OSError: The directory cannot be created or its parent flushed.
    """
    path = Path(directory)
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    fsync_directory(path.parent)


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably; the file gets mode 0600.

    A temp file in the same directory is written, flushed and fsynced, renamed
    onto ``path``, and the directory is fsynced so the rename survives a power
    cut. A reader sees the old file or the new one, never a mix; a failure
    before the rename removes the temp file and leaves the old file as it was.

    Raises:
        OSError: The file could not be written, renamed or made durable.
    """
    # mkstemp creates the file with mode 0600; the rename keeps it.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_directory(path.parent)
