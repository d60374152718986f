"""A replay resumed after letters were purged from its store stops instead of skipping letters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anyio
import pytest

import riprap
from riprap.checkpoints import CheckpointError, SqliteCheckpoints
from riprap.cli import main
from riprap.connectors.memory import MemorySink
from riprap.deadletters import (
    DeadLetterFilter,
    DeadLetterSource,
    JsonLinesDeadLetters,
    SqliteDeadLetters,
    purge_dead_letters,
)

from ._letters import T0, make_letter

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

Kind = Literal["jsonl", "sqlite"]


async def store(path: Path, kind: Kind, values: range, at: float, stage: str = "parse") -> None:
    """Dead-letter the records ``values`` (offsets and values alike), failed at ``at``."""
    letters = [make_letter(i, value=i, at=at, stage=stage) for i in values]
    sink = JsonLinesDeadLetters(path) if kind == "jsonl" else SqliteDeadLetters(path)
    await sink.open()
    await sink.write(letters)
    await sink.aclose()


async def replay(
    path: Path, checkpoints: Path, letters: DeadLetterFilter | None = None
) -> list[object]:
    """One replay run under 'orders.replay' with SQLite checkpoints: the values it sent."""
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("orders.replay", checkpoint=SqliteCheckpoints(checkpoints))
        .source(DeadLetterSource(path, filter=letters))
        .sink(sink)
    )
    await pipeline.run()
    return list(sink.values)


async def set_position(checkpoints: Path, setting: str) -> None:
    """``riprap checkpoint set`` on the replay's checkpoint."""
    argv = ["checkpoint", "set", str(checkpoints), "--pipeline", "orders.replay", setting]
    assert 0 == await anyio.to_thread.run_sync(main, argv)


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_letters_purged_before_the_position_stop_the_replay_which_names_where_to_resume(
    tmp_path: Path, kind: Kind, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replay all, purge the older ten, three new letters: no silent skip, resume after 5."""
    path, checkpoints = tmp_path / f"dlq.{kind}", tmp_path / "checkpoints.db"
    await store(path, kind, range(10), T0)
    await store(path, kind, range(10, 15), T0 + 100)
    assert list(range(15)) == await replay(path, checkpoints)
    assert 10 == purge_dead_letters(path, before=T0 + 50)
    await store(path, kind, range(100, 103), T0 + 200)
    partition = f"dlq:{path}"
    for _ in range(2):  # the failed run keeps what the next one checks
        with pytest.raises(CheckpointError) as caught:
            await replay(path, checkpoints)
        assert f"{partition} stopped at 15, right after letter" in str(caught.value)
        assert "which is now at 5" in str(caught.value)
        assert f"--pipeline orders.replay '{partition}=5'" in str(caught.value)
    await set_position(checkpoints, f"{partition}=5")
    capsys.readouterr()
    assert [100, 101, 102] == await replay(path, checkpoints)
    assert [] == await replay(path, checkpoints)


async def test_every_letter_sent_purged_means_resume_from_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replay all, purge all, new letters: the letter sent last is gone, so from 0."""
    path, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    await store(path, "jsonl", range(8), T0)
    assert list(range(8)) == await replay(path, checkpoints)
    assert 8 == purge_dead_letters(path, before=T0 + 50)
    await store(path, "jsonl", range(100, 104), T0 + 200)
    with pytest.raises(CheckpointError, match="which is no longer stored") as caught:
        await replay(path, checkpoints)
    assert f"'dlq:{path}=0'" in str(caught.value)
    await set_position(checkpoints, f"dlq:{path}=0")
    capsys.readouterr()
    assert [100, 101, 102, 103] == await replay(path, checkpoints)


async def test_letters_appended_since_are_replayed_without_a_word(tmp_path: Path) -> None:
    """A store that only grew resumes where the replay stopped, as before."""
    path, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    await store(path, "jsonl", range(6), T0)
    assert list(range(6)) == await replay(path, checkpoints)
    await store(path, "jsonl", range(6, 9), T0 + 10)
    assert [6, 7, 8] == await replay(path, checkpoints)


async def test_a_filtered_replays_position_is_checked_by_the_next_replay(tmp_path: Path) -> None:
    """Another filter's position, which says what was sent, is checked too."""
    path, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    await store(path, "jsonl", range(4), T0, stage="enrich")
    await store(path, "jsonl", range(4, 8), T0 + 100, stage="parse")
    assert [4, 5, 6, 7] == await replay(path, checkpoints, DeadLetterFilter(stage="parse"))
    assert 4 == purge_dead_letters(path, before=T0 + 50)
    await store(path, "jsonl", range(100, 102), T0 + 200, stage="parse")
    with pytest.raises(CheckpointError) as caught:
        await replay(path, checkpoints)
    assert f"dlq:{path}?stage=parse stopped at 8" in str(caught.value)
    assert "which is now at 4" in str(caught.value)


async def test_a_position_inside_a_batch_has_the_letter_before_it(tmp_path: Path) -> None:
    """A checkpoint may stop at any letter of a batch (a split batch): each has its letter."""
    path = tmp_path / "dlq.jsonl"
    await store(path, "jsonl", range(5), T0)
    source = DeadLetterSource(path)
    await source.open(riprap.SourceContext(pipeline="orders.replay", positions={}))
    batch = await source.read(10)
    await source.aclose()
    assert batch is not None
    ids = [make_letter(i, value=i, at=T0).id for i in range(5)]
    partition = source.partition
    at = {p: source.identities({partition: p}).get(partition) for p in (1, 3, 5)}
    assert {1: ids[0], 3: ids[2], 5: ids[4]} == at


async def test_a_rotation_that_deleted_the_oldest_file_stops_the_replay(tmp_path: Path) -> None:
    """With retention="delete_oldest", rotating past the backups drops letters the replay
    counted: the next replay stops, where it would have skipped as many new letters."""
    path, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    letters = JsonLinesDeadLetters(path, max_bytes=8_192, backups=1, retention="delete_oldest")
    await letters.open()
    for first in range(0, 40, 4):  # a write of four letters at a time: each file holds a few
        await letters.write([make_letter(i, value=i, at=T0) for i in range(first, first + 4)])
        if first == 8:
            sent = await replay(path, checkpoints)
    await letters.aclose()
    assert list(range(12)) == sent
    with pytest.raises(CheckpointError, match="which is no longer stored"):
        await replay(path, checkpoints)
