"""Durable file helpers: make a directory entry survive a power cut.

A rename or a new file is durable only once the directory that holds its entry
is fsynced too; every store that writes files (file checkpoints, JSON Lines
dead letters, the file sinks) goes through these two functions for that.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


def make_directory(directory: Path) -> None:
    """Create ``directory`` (and its parents) if needed, durably: its parent's entry is fsynced.

    Raises:
        OSError: The directory cannot be created or its parent flushed.
    """
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    fsync_directory(directory.parent)
