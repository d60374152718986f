"""The checkpoint backend contract: every backend's test module imports these tests.

A module provides an async ``backend`` fixture yielding a fresh backend and a
``twin_backends`` fixture yielding two backends on one store (what two processes
sharing it see), then ``from tests.checkpoint_contract import *``; pytest
collects the imported tests there and runs them against those backends (trio's
``check_one_way_stream`` habit).

The damage tests also need a ``tamper`` fixture: a :class:`Tamper` on the
``backend`` fixture's store, which reads and writes the stored snapshot of
``orders`` behind the backend's back, copies and restores the whole store (not
the generation recorded beside it) and deletes it, as an accident would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import pytest

from riprap.checkpoints import (
    Checkpoint,
    CheckpointBackend,
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointStatus,
    FencedError,
    RepairableBackend,
)

__all__ = [
    "DAMAGES",
    "Tamper",
    "snapshot",
    "test_aclose_keeps_data",
    "test_backwards_seq_refused",
    "test_claim_increments_epoch",
    "test_damaged_snapshot_refused",
    "test_deleted_store_refused",
    "test_fencing_across_instances",
    "test_generation_below_record_refused",
    "test_load_unknown_pipeline",
    "test_new_epoch_restarts_seq",
    "test_older_copy_refused",
    "test_overwrite_accepts_older_copy",
    "test_overwrite_replaces_damaged_snapshot",
    "test_pipelines_independent",
    "test_save_load_round_trip",
    "test_stale_epoch_refused",
    "test_status_of_consistent_store",
    "test_unclaimed_epoch_refused",
    "test_unserialisable_state_refused",
    "test_wrong_owner_same_epoch_refused",
    "test_zombie_cannot_overwrite_new_owner",
]


def snapshot(epoch: int, owner: str, seq: int, pipeline: str = "orders", **kw: Any) -> Checkpoint:
    """A checkpoint with a little of everything; its generation grows with (epoch, seq)."""
    return Checkpoint(
        pipeline=pipeline,
        epoch=epoch,
        owner=owner,
        seq=seq,
        positions=kw.get("positions", {"orders-0": 10 * seq, "orders-1": 7}),
        state=kw.get("state", {"dedupe": {"seen": ["a", "b"]}, "window": [[1, 2.5], None]}),
        crash_counts=kw.get("crash_counts", {"orders-0@41": 2}),
        created_at=1_700_000_000.25,
        generation=kw.get("generation", 100 * epoch + seq),
        identities=kw.get("identities", {"orders-0": "4096:3f2a"}),
    )


class Tamper(Protocol):
    """Raw access to a backend's store for the damage tests (see the module docstring)."""

    durable: bool
    """Whether the backend records generations outside the store (it can be rolled back)."""
    where: str
    """What the backend's error messages name as the place of ``orders``'s snapshot."""

    async def read(self) -> bytes:
        """The stored snapshot of ``orders``, as the backend stored it."""
        ...

    async def write(self, data: bytes) -> None:
        """Replace the stored snapshot of ``orders`` by ``data``."""
        ...

    async def copy(self) -> object:
        """A copy of the whole store, taken as a backup would be (the record excluded)."""
        ...

    async def restore(self, copy: object) -> None:
        """Put a copy back over the store, with no connection of the backend open."""
        ...

    async def delete(self) -> None:
        """Delete the whole store (the record stays)."""
        ...


# -- the contract, for every backend -----------------------------------------------------------


async def test_claim_increments_epoch(backend: CheckpointBackend) -> None:
    """Each claim takes the next epoch, starting at 1, and records its owner."""
    claims = [await backend.claim("orders", owner) for owner in ("a", "b", "c")]
    expected = [(1, "a", None), (2, "b", None), (3, "c", None)]
    assert expected == [(c.epoch, c.owner, c.checkpoint) for c in claims]


async def test_save_load_round_trip(backend: CheckpointBackend) -> None:
    """Positions, operator state, crash counts and identities come back exactly as saved."""
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


# -- integrity: damage, rollback and repair --------------------------------------------------


def _digit(data: bytes) -> bytes:
    """One digit of a position changed: still valid JSON, still well-typed, wrong."""
    changed = data.replace(b'"orders-0":10', b'"orders-0":19', 1)
    assert changed != data
    return changed


def _torn(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _garbage(data: bytes) -> bytes:
    return b"\x00\xffnot a checkpoint at all\x13" * (len(data) // 24 + 1)


DAMAGES = {"one digit": _digit, "torn": _torn, "garbage": _garbage}
"""Ways a stored snapshot gets damaged, by name."""


@pytest.mark.parametrize("damage", sorted(DAMAGES))
async def test_damaged_snapshot_refused(
    backend: CheckpointBackend, tamper: Tamper, damage: str
) -> None:
    """A snapshot with a digit changed, torn or garbled stops load and claim, naming its place."""
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    await tamper.write(DAMAGES[damage](await tamper.read()))
    with pytest.raises(CheckpointIntegrityError) as loading:
        await backend.load("orders")
    with pytest.raises(CheckpointIntegrityError) as claiming:
        await backend.claim("orders", "b")
    expected = (True, True, True, None)
    assert expected == (
        tamper.where in str(loading.value),
        tamper.where in str(claiming.value),
        claiming.value.damaged,
        claiming.value.found,
    )


async def test_older_copy_refused(backend: CheckpointBackend, tamper: Tamper) -> None:
    """A store put back to an older copy is refused, with both generations in the message."""
    if not tamper.durable:
        pytest.skip("nothing outside the store remembers a newer generation")
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    backup = await tamper.copy()
    await backend.save(snapshot(1, "a", seq=2))
    await backend.save(snapshot(1, "a", seq=3))
    await tamper.restore(backup)
    with pytest.raises(CheckpointIntegrityError) as claiming:
        await backend.claim("orders", "b")
    with pytest.raises(CheckpointIntegrityError) as loading:
        await backend.load("orders")
    message = str(claiming.value)
    expected = (103, 101, True, True, True, True, str(claiming.value))
    assert expected == (
        claiming.value.expected,
        claiming.value.found,
        tamper.where in message,
        "expected generation 103" in message and "found generation 101" in message,
        "riprap checkpoint reset" in message,
        "rolled back" in message,
        str(loading.value),
    )


async def test_deleted_store_refused(backend: CheckpointBackend, tamper: Tamper) -> None:
    """A store deleted after a run does not look like a first start: the claim is refused."""
    if not tamper.durable:
        pytest.skip("nothing outside the store remembers a save")
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=4))
    await tamper.delete()
    with pytest.raises(CheckpointIntegrityError) as claiming:
        await backend.claim("orders", "b")
    message = str(claiming.value)
    expected = (104, None, False, True, True)
    assert expected == (
        claiming.value.expected,
        claiming.value.found,
        claiming.value.damaged,
        "is missing" in message,
        "--wipe --yes" in message,
    )


async def test_generation_below_record_refused(backend: CheckpointBackend, tamper: Tamper) -> None:
    """A save whose generation is below the recorded one is refused and changes nothing."""
    if not tamper.durable:
        pytest.skip("no generation is recorded")
    await backend.claim("orders", "a")
    latest = snapshot(1, "a", seq=5)
    await backend.save(latest)
    await backend.claim("orders", "b")
    with pytest.raises(CheckpointError, match="below the recorded generation 105"):
        await backend.save(snapshot(2, "b", seq=1, generation=7))
    assert latest == await backend.load("orders")


async def test_status_of_consistent_store(backend: CheckpointBackend) -> None:
    """A healthy store's status says consistent, with its snapshot, epoch and owner."""
    assert isinstance(backend, RepairableBackend)
    await backend.claim("orders", "a")
    saved = snapshot(1, "a", seq=2)
    await backend.save(saved)
    status = await backend.status("orders")
    expected = (True, None, saved, 1, "a", 103, ["orders"])
    assert expected == (
        status.consistent,
        status.problem,
        status.checkpoint,
        status.epoch,
        status.owner,
        status.next_generation,
        await backend.pipelines(),
    )


def _accept(owner: str) -> Any:
    """An ``overwrite`` builder that accepts what is stored, as ``riprap checkpoint reset``."""

    def build(status: CheckpointStatus, epoch: int) -> Checkpoint:
        assert status.checkpoint is not None
        return dataclasses.replace(
            status.checkpoint,
            epoch=epoch,
            owner=owner,
            seq=1,
            generation=status.next_generation,
            notes=("accepted",),
        )

    return build


async def test_overwrite_accepts_older_copy(backend: CheckpointBackend, tamper: Tamper) -> None:
    """After a rollback, accepting the older copy lets the next claim resume from it."""
    if not tamper.durable:
        pytest.skip("nothing to roll back")
    assert isinstance(backend, RepairableBackend)
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    backup = await tamper.copy()
    await backend.save(snapshot(1, "a", seq=2))
    await tamper.restore(backup)
    before = await backend.status("orders")
    written = await backend.overwrite("orders", "operator", _accept("operator"))
    claim = await backend.claim("orders", "b")
    expected = (False, 102, 101, 103, written, {"orders-0": 10, "orders-1": 7}, ("accepted",))
    assert expected == (
        before.consistent,
        before.recorded,
        before.checkpoint.generation if before.checkpoint else None,
        written.generation,
        claim.checkpoint,
        dict(claim.checkpoint.positions) if claim.checkpoint else None,
        claim.checkpoint.notes if claim.checkpoint else None,
    )


async def test_overwrite_replaces_damaged_snapshot(
    backend: CheckpointBackend, tamper: Tamper
) -> None:
    """A garbled snapshot can be replaced deliberately; the next claim starts from the new one."""
    assert isinstance(backend, RepairableBackend)
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=3))
    await tamper.write(_garbage(await tamper.read()))
    status = await backend.status("orders")

    def wipe(current: CheckpointStatus, epoch: int) -> Checkpoint:
        return Checkpoint("orders", epoch, "operator", seq=1, generation=current.next_generation)

    written = await backend.overwrite("orders", "operator", wipe)
    claim = await backend.claim("orders", "b")
    nothing: dict[str, int] = {}
    expected = (False, True, None, written, nothing)
    assert expected == (
        status.consistent,
        isinstance(status.problem, CheckpointIntegrityError),
        status.checkpoint,
        claim.checkpoint,
        dict(claim.checkpoint.positions) if claim.checkpoint else None,
    )
