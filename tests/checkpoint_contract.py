"""The checkpoint backend contract: every backend's test module imports these tests.

A module provides an async ``backend`` fixture yielding a fresh backend and a
``twin_backends`` fixture yielding two backends on one store (what two processes
sharing it see), then ``from tests.checkpoint_contract import *``; pytest
collects the imported tests there and runs them against those backends (trio's
``check_one_way_stream`` habit).
"""

from __future__ import annotations

from typing import Any

import pytest

from riprap.checkpoints import Checkpoint, CheckpointBackend, CheckpointError, FencedError

__all__ = [
    "snapshot",
    "test_aclose_keeps_data",
    "test_backwards_seq_refused",
    "test_claim_increments_epoch",
    "test_fencing_across_instances",
    "test_load_unknown_pipeline",
    "test_new_epoch_restarts_seq",
    "test_pipelines_independent",
    "test_save_load_round_trip",
    "test_stale_epoch_refused",
    "test_unclaimed_epoch_refused",
    "test_unserialisable_state_refused",
    "test_wrong_owner_same_epoch_refused",
    "test_zombie_cannot_overwrite_new_owner",
]


def snapshot(epoch: int, owner: str, seq: int, pipeline: str = "orders", **kw: Any) -> Checkpoint:
    """A checkpoint with a little of everything."""
    return Checkpoint(
        pipeline=pipeline,
        epoch=epoch,
        owner=owner,
        seq=seq,
        positions=kw.get("positions", {"orders-0": 10 * seq, "orders-1": 7}),
        state=kw.get("state", {"dedupe": {"seen": ["a", "b"]}, "window": [[1, 2.5], None]}),
        crash_counts=kw.get("crash_counts", {"orders-0@41": 2}),
        created_at=1_700_000_000.25,
    )


# -- the contract, for every backend -----------------------------------------------------------


async def test_claim_increments_epoch(backend: CheckpointBackend) -> None:
    """Each claim takes the next epoch, starting at 1, and records its owner."""
    claims = [await backend.claim("orders", owner) for owner in ("a", "b", "c")]
    expected = [(1, "a", None), (2, "b", None), (3, "c", None)]
    assert expected == [(c.epoch, c.owner, c.checkpoint) for c in claims]


async def test_save_load_round_trip(backend: CheckpointBackend) -> None:
    """Positions, operator state and crash counts come back exactly as saved."""
    await backend.claim("orders", "a")
    saved = snapshot(1, "a", seq=1)
    await backend.save(saved)
    assert saved == await backend.load("orders")
    assert saved == (await backend.claim("orders", "b")).checkpoint


async def test_load_unknown_pipeline(backend: CheckpointBackend) -> None:
    """A pipeline that never saved loads as None, claimed or not."""
    assert None is await backend.load("orders")
    await backend.claim("orders", "a")
    assert None is await backend.load("orders")


async def test_stale_epoch_refused(backend: CheckpointBackend) -> None:
    """A save from an epoch older than the latest claim raises FencedError."""
    await backend.claim("orders", "a")
    await backend.claim("orders", "b")
    with pytest.raises(FencedError) as caught:
        await backend.save(snapshot(1, "a", seq=1))
    expected = (1, 2, "a")
    assert expected == (caught.value.epoch, caught.value.current_epoch, caught.value.owner)
    assert None is await backend.load("orders")


async def test_wrong_owner_same_epoch_refused(backend: CheckpointBackend) -> None:
    """A save at the current epoch from someone other than its owner is refused."""
    await backend.claim("orders", "a")
    with pytest.raises(FencedError, match="held by 'a'"):
        await backend.save(snapshot(1, "intruder", seq=1))
    assert None is await backend.load("orders")


async def test_unclaimed_epoch_refused(backend: CheckpointBackend) -> None:
    """A save without a claim, or from an epoch not yet claimed, is refused."""
    with pytest.raises(FencedError, match="never been claimed"):
        await backend.save(snapshot(1, "a", seq=1))
    await backend.claim("orders", "a")
    with pytest.raises(FencedError, match="not been claimed"):
        await backend.save(snapshot(2, "a", seq=1))
    assert None is await backend.load("orders")


async def test_backwards_seq_refused(backend: CheckpointBackend) -> None:
    """Within an epoch a save must have a higher seq than the stored one."""
    await backend.claim("orders", "a")
    latest = snapshot(1, "a", seq=2)
    await backend.save(latest)
    for seq in (1, 2):
        with pytest.raises(FencedError, match="not newer"):
            await backend.save(snapshot(1, "a", seq=seq, positions={"orders-0": 0}))
    assert latest == await backend.load("orders")


async def test_new_epoch_restarts_seq(backend: CheckpointBackend) -> None:
    """A new owner may start its seq again: ordering compares (epoch, seq)."""
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=9))
    await backend.claim("orders", "b")
    fresh = snapshot(2, "b", seq=1)
    await backend.save(fresh)
    assert fresh == await backend.load("orders")


async def test_pipelines_independent(backend: CheckpointBackend) -> None:
    """Pipelines sharing a backend have their own epochs, owners and snapshots."""
    await backend.claim("orders", "a")
    await backend.claim("orders", "b")
    claim = await backend.claim("users", "a")
    orders, users = snapshot(2, "b", seq=1), snapshot(1, "a", seq=1, pipeline="users")
    await backend.save(orders)
    await backend.save(users)
    assert (1, orders, users) == (
        claim.epoch,
        await backend.load("orders"),
        await backend.load("users"),
    )


async def test_zombie_cannot_overwrite_new_owner(backend: CheckpointBackend) -> None:
    """After a takeover the old owner's saves fail and the new owner's checkpoint is intact."""
    await backend.claim("orders", "zombie")
    await backend.save(snapshot(1, "zombie", seq=1))
    await backend.claim("orders", "heir")
    heir = snapshot(2, "heir", seq=1)
    await backend.save(heir)
    with pytest.raises(FencedError):
        await backend.save(snapshot(1, "zombie", seq=50, positions={"orders-0": 0}))
    assert heir == await backend.load("orders")


async def test_unserialisable_state_refused(backend: CheckpointBackend) -> None:
    """State that is not JSON raises CheckpointError naming the pipeline and stores nothing."""
    await backend.claim("orders", "a")
    with pytest.raises(CheckpointError, match="'orders'"):
        await backend.save(snapshot(1, "a", seq=1, state={"window": object()}))
    assert None is await backend.load("orders")


async def test_aclose_keeps_data(backend: CheckpointBackend) -> None:
    """Closing twice is fine and the backend still serves the stored checkpoint."""
    await backend.claim("orders", "a")
    saved = snapshot(1, "a", seq=1)
    await backend.save(saved)
    await backend.aclose()
    await backend.aclose()
    assert saved == await backend.load("orders")


# -- fencing between processes ------------------------------------------------------------------


async def test_fencing_across_instances(
    twin_backends: tuple[CheckpointBackend, CheckpointBackend],
) -> None:
    """Two backends on one store fence each other: the zombie's save is refused after a claim."""
    zombie, heir = twin_backends
    await zombie.claim("orders", "zombie")
    await zombie.save(snapshot(1, "zombie", seq=1))
    claim = await heir.claim("orders", "heir")
    with pytest.raises(FencedError):
        await zombie.save(snapshot(1, "zombie", seq=2))
    heir_cp = snapshot(2, "heir", seq=1)
    await heir.save(heir_cp)
    assert (2, snapshot(1, "zombie", seq=1), heir_cp) == (
        claim.epoch,
        claim.checkpoint,
        await zombie.load("orders"),
    )
