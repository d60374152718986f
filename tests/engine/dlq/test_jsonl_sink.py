"""The JSON Lines dead-letter sink: durability, permissions, rotation, retention, crash repair."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

import pytest

from riprap import ConfigError
from riprap.deadletters import (
    DeadLetterSink,
    DeadLetterStoreFullError,
    JsonLinesDeadLetters,
    purge_dead_letters,
    read_dead_letters,
)

from ._letters import make_letter

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from riprap.deadletters import DeadLetter

pytestmark = pytest.mark.anyio


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, the most permissive, and restore it afterwards."""
    old = os.umask(0)
    yield
    os.umask(old)


async def write_each(sink: JsonLinesDeadLetters, letters: list[DeadLetter]) -> None:
    """Open ``sink``, write every letter in a write of its own, close it."""
    await sink.open()
    try:
        for letter in letters:
            await sink.write([letter])
    finally:
        await sink.aclose()


def store_files(directory: Path) -> list[str]:
    """The names of the files in ``directory``, lock files aside, sorted."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


async def test_sink_satisfies_the_protocol(tmp_path: Path) -> None:
    """The JSON Lines store is a ``DeadLetterSink``."""
    assert isinstance(JsonLinesDeadLetters(tmp_path / "dlq.jsonl"), DeadLetterSink)


@pytest.mark.usefixtures("open_umask")
async def test_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """A new file gets mode 0600 even under umask 0, in a directory created on demand."""
    path = tmp_path / "sub" / "dlq.jsonl"
    await write_each(JsonLinesDeadLetters(path), [make_letter()])
    assert 0o600 == mode(path)


async def test_existing_loose_file_is_tightened(tmp_path: Path) -> None:
    """An existing world-readable file is narrowed to 0600 when the sink opens it."""
    path = tmp_path / "dlq.jsonl"
    path.write_bytes(b"")
    path.chmod(0o644)
    await write_each(JsonLinesDeadLetters(path), [])
    assert 0o600 == mode(path)


async def test_one_envelope_per_line(tmp_path: Path) -> None:
    """Each letter is one line; a batch written at once reads back in order."""
    path = tmp_path / "dlq.jsonl"
    letters = [make_letter(offset) for offset in range(10, 13)]
    sink = JsonLinesDeadLetters(path)
    await sink.open()
    await sink.write(letters)
    await sink.aclose()
    assert 3 == path.read_bytes().count(b"\n")
    assert letters == list(read_dead_letters(path))


@pytest.mark.parametrize(
    ("backups", "kept", "deleted"), [(3, range(10, 17), 0), (2, range(12, 17), 2)]
)
async def test_rotation_with_retention_keeps_backups_and_reads_in_order(
    tmp_path: Path, backups: int, kept: range, deleted: int
) -> None:
    """With ``delete_oldest``, at most ``backups`` files are kept and what went is counted."""
    path = tmp_path / "dlq.jsonl"
    letters = [make_letter(offset) for offset in range(10, 17)]
    line = len(letters[0].to_json()) + 1
    sink = JsonLinesDeadLetters(
        path, max_bytes=2 * line, backups=backups, retention="delete_oldest"
    )
    await write_each(sink, letters)
    names = store_files(tmp_path)
    expected_names = ["dlq.jsonl", *(f"dlq.jsonl.{i}" for i in range(1, backups + 1))]
    assert expected_names == names
    assert [make_letter(offset) for offset in kept] == list(read_dead_letters(path))
    assert deleted == sink.deleted
    assert all(0o600 == mode(tmp_path / name) for name in names)


async def test_a_full_store_refuses_the_write_and_deletes_nothing(tmp_path: Path) -> None:
    """Without a retention, a rotation that would delete letters fails the write (ENOSPC)."""
    path = tmp_path / "dlq.jsonl"
    letters = [make_letter(offset) for offset in range(10, 15)]
    line = len(letters[0].to_json()) + 1
    sink = JsonLinesDeadLetters(path, max_bytes=2 * line, backups=1)
    await sink.open()
    try:
        for letter in letters[:4]:
            await sink.write([letter])
        with pytest.raises(
            DeadLetterStoreFullError, match="is full: rotating would delete 2"
        ) as info:
            await sink.write([letters[4]])
    finally:
        await sink.aclose()
    assert (errno.ENOSPC, 0) == (info.value.errno, sink.deleted)
    assert (["dlq.jsonl", "dlq.jsonl.1"], letters[:4]) == (
        store_files(tmp_path),
        list(read_dead_letters(path)),
    )


async def test_a_purged_oldest_file_makes_room(tmp_path: Path) -> None:
    """Once the oldest file's letters are purged, the next rotation drops it and writes."""
    path = tmp_path / "dlq.jsonl"
    letters = [make_letter(offset, at=1_000.0 + offset) for offset in range(10, 15)]
    line = len(letters[0].to_json()) + 1
    await write_each(JsonLinesDeadLetters(path, max_bytes=2 * line, backups=1), letters[:4])
    assert 2 == purge_dead_letters(path, before=1_012.0)  # the two in dlq.jsonl.1
    sink = JsonLinesDeadLetters(path, max_bytes=2 * line, backups=1)
    await write_each(sink, letters[4:])
    assert (letters[2:], 0) == (list(read_dead_letters(path)), sink.deleted)


def test_an_unknown_retention_is_a_config_error(tmp_path: Path) -> None:
    """``retention`` is ``"keep"`` or ``"delete_oldest"``; anything else names the option."""
    with pytest.raises(ConfigError, match="retention"):
        JsonLinesDeadLetters(tmp_path / "dlq.jsonl", retention="forever")  # type: ignore[arg-type]


async def test_oversized_write_gets_its_own_file(tmp_path: Path) -> None:
    """A write larger than ``max_bytes`` is written whole, after a rotation."""
    path = tmp_path / "dlq.jsonl"
    sink = JsonLinesDeadLetters(path, max_bytes=10)
    await sink.open()
    await sink.write([make_letter(10)])
    await sink.write([make_letter(11), make_letter(12)])
    await sink.aclose()
    assert [make_letter(10)] == list(read_dead_letters(tmp_path / "dlq.jsonl.1"))
    assert [make_letter(o) for o in (10, 11, 12)] == list(read_dead_letters(path))


async def test_failed_rotation_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation whose rename fails fails that write; the next write succeeds."""
    path = tmp_path / "dlq.jsonl"
    sink = JsonLinesDeadLetters(path, max_bytes=10)
    await sink.open()
    await sink.write([make_letter(10)])
    replace = os.replace

    def fail_once(src: object, dst: object) -> None:
        monkeypatch.setattr(os, "replace", replace)
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "replace", fail_once)
    with pytest.raises(OSError, match="injected"):
        await sink.write([make_letter(11)])
    await sink.write([make_letter(12)])
    await sink.aclose()
    assert [make_letter(10), make_letter(12)] == list(read_dead_letters(path))


async def test_unfinished_last_line_is_cut_on_open(tmp_path: Path) -> None:
    """A line a crash left half written is skipped by readers and removed by the next writer."""
    path = tmp_path / "dlq.jsonl"
    await write_each(JsonLinesDeadLetters(path), [make_letter(10)])
    with path.open("ab") as file:
        file.write(make_letter(11).to_json()[:50])
    assert [make_letter(10)] == list(read_dead_letters(path))
    await write_each(JsonLinesDeadLetters(path), [make_letter(12)])
    assert [make_letter(10), make_letter(12)] == list(read_dead_letters(path))


async def test_corrupt_line_names_file_and_line(tmp_path: Path) -> None:
    """A complete but corrupt line is an error that points at it."""
    path = tmp_path / "dlq.jsonl"
    path.write_bytes(make_letter(10).to_json() + b"\n{oops}\n")
    with pytest.raises(ValueError, match=r"dlq\.jsonl:2: dead letter: not valid JSON"):
        list(read_dead_letters(path))


async def test_second_writer_is_refused(tmp_path: Path) -> None:
    """Two sinks on one file would interleave rotations, so the second one fails to open."""
    path = tmp_path / "dlq.jsonl"
    first = JsonLinesDeadLetters(path)
    await first.open()
    try:
        with pytest.raises(OSError, match="another dead-letter writer") as info:
            await JsonLinesDeadLetters(path).open()
        assert errno.EBUSY == info.value.errno
    finally:
        await first.aclose()


async def test_write_before_open_fails(tmp_path: Path) -> None:
    """Writing to a sink that was never opened is a programming error, not a silent drop."""
    with pytest.raises(RuntimeError, match="write before open"):
        await JsonLinesDeadLetters(tmp_path / "dlq.jsonl").write([make_letter()])


async def test_missing_store_is_reported(tmp_path: Path) -> None:
    """Reading where nothing was ever written raises ``FileNotFoundError``."""
    with pytest.raises(FileNotFoundError):
        list(read_dead_letters(tmp_path / "nothing.jsonl"))
