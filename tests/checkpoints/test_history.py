"""Kept checkpoint generations: each embedded backend keeps its last snapshots, fenced, checked."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from riprap import ConfigError
from riprap.checkpoints import (
    Checkpoint,
    CheckpointIntegrityError,
    CheckpointStatus,
    FencedError,
    FileCheckpoints,
    MemoryCheckpoints,
    SqliteCheckpoints,
    stale_generations,
)
from tests.checkpoint_contract import snapshot

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

Backend = MemoryCheckpoints | FileCheckpoints | SqliteCheckpoints
KEPT = 4


def make(kind: str, tmp_path: Path, history: int = KEPT) -> Backend:
    """A backend of ``kind`` keeping ``history`` snapshots."""
    if kind == "memory":
        return MemoryCheckpoints(history=history)
    if kind == "file":
        return FileCheckpoints(tmp_path / "checkpoints", history=history)
    return SqliteCheckpoints(tmp_path / "checkpoints.db", history=history)


@pytest.fixture(params=["memory", "file", "sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each embedded backend in turn, keeping ``KEPT`` snapshots, closed after the test."""
    store = make(request.param, tmp_path)
    yield store
    await store.aclose()


async def save_many(backend: Backend, count: int, owner: str = "a") -> int:
    """Claim, then save ``count`` snapshots (positions 10 per seq); return the epoch."""
    claim = await backend.claim("orders", owner)
    for seq in range(1, count + 1):
        await backend.save(snapshot(claim.epoch, owner, seq))
    return claim.epoch


async def test_the_last_snapshots_are_kept_newest_first(backend: Backend) -> None:
    """Of 9 saves, the last ``KEPT`` and the ladder's are kept, newest first, each as saved.

    With 4 kept: after save 9, generations 9 to 6, then 5 (the oldest within 4
    to 7 saves back: 1 to 4 have moved on or gone) and 1 (8 saves back).
    """
    epoch = await save_many(backend, 9)
    kept = await backend.history("orders")
    expected = [snapshot(epoch, "a", seq) for seq in (9, 8, 7, 6, 5, 1)]
    assert [(cp.generation, dict(cp.positions)) for cp in expected] == [
        (cp.generation, dict(cp.positions)) for cp in kept
    ]
    assert kept[0] == await backend.load("orders")


async def test_a_fenced_save_is_not_kept(backend: Backend) -> None:
    """A stale owner's save is refused by the same check as the latest, and not kept."""
    old = await save_many(backend, 2)
    await save_many(backend, 1, owner="b")
    with pytest.raises(FencedError):
        await backend.save(snapshot(old, "a", 3))
    assert ["b", "a", "a"] == [cp.owner for cp in await backend.history("orders")]


async def test_an_operator_overwrite_is_kept(backend: Backend) -> None:
    """``riprap checkpoint set`` (an overwrite) is a generation of the history too."""
    await save_many(backend, 2)

    def build(status: CheckpointStatus, epoch: int) -> Checkpoint:
        return Checkpoint(
            pipeline="orders", epoch=epoch, owner="operator", positions={"x": 1}, generation=999
        )

    await backend.overwrite("orders", "operator", build)
    kept = await backend.history("orders")
    assert [999, 102, 101] == [cp.generation for cp in kept]


async def test_nothing_kept_for_an_unknown_pipeline(backend: Backend) -> None:
    """A pipeline never saved has no history."""
    assert [] == await backend.history("nobody")


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
@pytest.mark.parametrize("history", [0, -1, True])
def test_a_bad_history_option_is_refused(tmp_path: Path, kind: str, history: int) -> None:
    """``history`` must be an integer of at least 1 (the latest is always kept)."""
    with pytest.raises(ConfigError, match="history"):
        make(kind, tmp_path, history)


async def test_history_survives_a_new_backend(tmp_path: Path) -> None:
    """File and SQLite history is durable: a new backend object reads the same generations."""
    for kind in ("file", "sqlite"):
        first = make(kind, tmp_path)
        await save_many(first, 6)
        await first.aclose()
        again = make(kind, tmp_path)
        kept = [cp.generation for cp in await again.history("orders")]
        await again.aclose()
        assert [106, 105, 104, 103, 101] == kept, kind  # 101: the ladder's


async def test_a_kept_copy_keeps_its_bytes_when_the_latest_is_replaced(tmp_path: Path) -> None:
    """File history links each saved file: a later save does not change a kept one."""
    backend = FileCheckpoints(tmp_path, history=KEPT)
    await save_many(backend, 3)
    folder = tmp_path / "orders.history"
    assert 3 == len(list(folder.iterdir()))
    changed = dataclasses.replace(snapshot(1, "a", 4), positions={"orders-0": 12345})
    await backend.save(changed)
    kept = await backend.history("orders")
    assert [12345, 30, 20] == [cp.positions["orders-0"] for cp in kept][:3]


async def test_a_damaged_kept_snapshot_is_refused(tmp_path: Path) -> None:
    """A kept snapshot whose bytes changed fails its checksum: an error naming the file."""
    backend = FileCheckpoints(tmp_path, history=KEPT)
    await save_many(backend, 3)
    oldest = sorted((tmp_path / "orders.history").iterdir())[0]
    oldest.write_bytes(oldest.read_bytes().replace(b'"orders-1":7', b'"orders-1":8'))
    with pytest.raises(CheckpointIntegrityError, match=oldest.name):
        await backend.history("orders")
    assert 103 == (await backend.load("orders") or snapshot(1, "a", 0)).generation


async def test_an_operator_tool_with_a_smaller_history_drops_nothing(tmp_path: Path) -> None:
    """``riprap checkpoint set`` opens a store at the default history: it must not prune runs'."""
    for kind in ("file", "sqlite"):
        runs = make(kind, tmp_path)
        await save_many(runs, 6)
        await runs.aclose()
        tool = make(kind, tmp_path, history=1)

        def build(status: CheckpointStatus, epoch: int) -> Checkpoint:
            generation = status.next_generation
            return Checkpoint(pipeline="orders", epoch=epoch, owner="op", generation=generation)

        await tool.overwrite("orders", "op", build)
        kept = [cp.generation for cp in await tool.history("orders")]
        await tool.aclose()
        assert [107, 106, 105, 104, 103, 101] == kept, kind


@pytest.mark.parametrize("history", [1, 2, 3, 10])
def test_the_kept_generations_reach_back_with_a_logarithmic_count(history: int) -> None:
    """After every save: the newest ``history`` kept; any older point in the run has a kept
    generation at most three times as far back; the count grows with the log of the age."""
    kept: list[int] = []
    for newest in range(1, 2_001):
        kept.append(newest)
        for stale in stale_generations(kept, history):
            kept.remove(stale)
        ages = sorted(newest - generation for generation in kept)
        assert list(range(min(history, newest))) == ages[:history]
        for asked in range(history, newest):
            assert min(age for age in ages if age >= asked) <= 3 * asked
        assert len(kept) <= history + (newest // history).bit_length()


def test_each_band_of_age_keeps_its_oldest() -> None:
    """Up to ``history`` generations all are kept; beyond, the oldest of each band of age.

    Generations 1 to 10 with 4 kept: 7 to 10 are the newest; 3 to 6 are 4 to 7
    behind (band 1: 3 stays), 1 and 2 are 8 and 9 behind (band 2: 1 stays).
    """
    assert [] == stale_generations([5, 3, 5, 4], 3)
    assert [2, 4, 5, 6] == stale_generations([4, 2, 3, 1, 5, 6, 7, 8, 9, 10], 4)
