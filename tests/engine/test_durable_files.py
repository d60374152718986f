"""Durable directories: ``riprap.lowlevel.fsync_directory`` and the stores that use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from riprap.checkpoints import CheckpointError, FileCheckpoints
from riprap.lowlevel import fsync_directory

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def test_fsync_directory_flushes_an_existing_directory(tmp_path: Path) -> None:
    """A directory that exists is flushed without error, given as a path or a string."""
    fsync_directory(tmp_path)
    fsync_directory(str(tmp_path))


def test_fsync_directory_of_a_missing_directory_raises(tmp_path: Path) -> None:
    """A directory that is not there cannot be made durable: the OSError says so."""
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "missing")


async def test_file_checkpoints_create_their_directory_on_first_claim(tmp_path: Path) -> None:
    """The checkpoint directory, parents included, appears on the first claim."""
    directory = tmp_path / "a" / "b"
    backend = FileCheckpoints(directory)
    await backend.claim("orders", "me")
    await backend.aclose()
    assert directory.is_dir()


async def test_a_checkpoint_directory_that_cannot_be_made_is_a_checkpoint_error(
    tmp_path: Path,
) -> None:
    """A file where the directory should be is reported as a CheckpointError naming it."""
    blocker = tmp_path / "taken"
    blocker.write_text("")
    backend = FileCheckpoints(blocker / "checkpoints")
    with pytest.raises(CheckpointError, match="cannot create checkpoint directory"):
        await backend.claim("orders", "me")
