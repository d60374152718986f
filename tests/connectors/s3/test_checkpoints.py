"""S3Checkpoints: the checkpoint backend contract against moto, plus S3-specific fencing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

from riprap import Checkpoint, CheckpointBackend, CheckpointError, FencedError
from riprap.connectors.s3 import S3Checkpoints

from .conftest import client_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]

PREFIX = "checkpoints/"


def make_backend(store: Store) -> S3Checkpoints:
    """A backend on the test's bucket."""
    return S3Checkpoints(
        store.bucket, PREFIX, endpoint_url=store.endpoint, client_config=client_config()
    )


@pytest.fixture
async def backend(store: Store) -> AsyncIterator[CheckpointBackend]:
    """An S3 backend on a fresh bucket, closed after the test."""
    checkpoints = make_backend(store)
    yield checkpoints
    await checkpoints.aclose()


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


# -- the contract (the same cases as tests/engine/test_checkpoints.py) --------------------------


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


# -- fencing between instances (two processes' view) --------------------------------------------


async def test_fencing_across_instances(store: Store) -> None:
    """Two backends on one bucket fence each other: the zombie's save is refused after a claim."""
    zombie, heir = make_backend(store), make_backend(store)
    try:
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
    finally:
        await zombie.aclose()
        await heir.aclose()


async def test_claim_between_check_and_write_fences_zombie(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim after a zombie's check makes its conditional write fail; the retry refuses."""
    zombie, heir = make_backend(store), make_backend(store)
    try:
        await zombie.claim("orders", "zombie")
        real_write = S3Checkpoints._write
        raced: list[int] = []

        async def write_after_takeover(
            self: S3Checkpoints,
            client: Any,
            pipeline: str,
            body: bytes,
            etag: str | None,
            attempt: int,
        ) -> bool:
            if self is zombie and not raced:
                raced.append((await heir.claim("orders", "heir")).epoch)
            return await real_write(self, client, pipeline, body, etag, attempt)

        monkeypatch.setattr(S3Checkpoints, "_write", write_after_takeover)
        with pytest.raises(FencedError) as caught:
            await zombie.save(snapshot(1, "zombie", seq=1))
        monkeypatch.undo()
        expected = ([2], 2, None)
        assert expected == (raced, caught.value.current_epoch, await heir.load("orders"))
    finally:
        await zombie.aclose()
        await heir.aclose()


async def test_claim_retries_a_lost_race(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim whose conditional write loses to another claim re-reads and takes the next epoch."""
    first, second = make_backend(store), make_backend(store)
    try:
        await first.claim("orders", "a")
        real_write = S3Checkpoints._write
        calls: list[int] = []

        async def interleaved(
            self: S3Checkpoints,
            client: Any,
            pipeline: str,
            body: bytes,
            etag: str | None,
            attempt: int,
        ) -> bool:
            if self is first and not calls:
                calls.append((await second.claim("orders", "b")).epoch)
            return await real_write(self, client, pipeline, body, etag, attempt)

        monkeypatch.setattr(S3Checkpoints, "_write", interleaved)
        claim = await first.claim("orders", "c")
        monkeypatch.undo()
        stored = orjson.loads(await store.get(PREFIX + "orders.checkpoint.json"))
        expected = ([2], (3, "c"), (3, "c"))
        assert expected == (calls, (claim.epoch, claim.owner), (stored["epoch"], stored["owner"]))
    finally:
        await first.aclose()
        await second.aclose()


# -- corruption and names -----------------------------------------------------------------------


async def test_corrupt_object(backend: CheckpointBackend, store: Store) -> None:
    """A damaged checkpoint object raises CheckpointError naming it, for load, claim and save."""
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    key = PREFIX + "orders.checkpoint.json"
    await store.put(key, b'{"version": 1, "pipeline": "ord')
    where = f"s3://{store.bucket}/{key}"
    messages = []
    for attempt in (
        backend.load("orders"),
        backend.claim("orders", "b"),
        backend.save(snapshot(1, "a", seq=2)),
    ):
        with pytest.raises(CheckpointError, match="corrupt checkpoint object") as caught:
            await attempt
        messages.append(where in str(caught.value))
    assert [True, True, True] == messages


async def test_snapshot_of_wrong_type(backend: CheckpointBackend, store: Store) -> None:
    """A well-formed object whose snapshot has a field of the wrong type is reported."""
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    key = PREFIX + "orders.checkpoint.json"
    await store.put(key, (await store.get(key)).replace(b'"seq":1', b'"seq":"1"'))
    with pytest.raises(CheckpointError, match="seq '1' is not a non-negative integer"):
        await backend.load("orders")


async def test_names_are_escaped(backend: CheckpointBackend, store: Store) -> None:
    """Pipeline names with separators get one object each under the prefix and round-trip."""
    names = ["../escape", "a/b", "x.checkpoint"]
    for name in names:
        await backend.claim(name, "a")
        await backend.save(snapshot(1, "a", seq=1, pipeline=name))
    loaded = [await backend.load(name) for name in names]
    expected_keys = [
        PREFIX + "..%2Fescape.checkpoint.json",
        PREFIX + "a%2Fb.checkpoint.json",
        PREFIX + "x.checkpoint.checkpoint.json",
    ]
    assert ([snapshot(1, "a", seq=1, pipeline=n) for n in names], expected_keys) == (
        loaded,
        await store.keys(),
    )
