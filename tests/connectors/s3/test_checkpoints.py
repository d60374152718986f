"""S3Checkpoints: the checkpoint backend contract against moto, S3-specific fencing, the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread
import orjson
import pytest

from riprap.checkpoints import CheckpointBackend, CheckpointError, FencedError
from riprap.cli import main
from riprap.connectors.s3 import S3Checkpoints

# The backend contract suite, run here against this module's `backend` fixture.
from tests.checkpoint_contract import snapshot
from tests.checkpoint_contract import test_aclose_keeps_data as test_aclose_keeps_data
from tests.checkpoint_contract import test_backwards_seq_refused as test_backwards_seq_refused
from tests.checkpoint_contract import test_claim_increments_epoch as test_claim_increments_epoch
from tests.checkpoint_contract import (
    test_damaged_snapshot_refused as test_damaged_snapshot_refused,
)
from tests.checkpoint_contract import test_deleted_store_refused as test_deleted_store_refused
from tests.checkpoint_contract import (
    test_fencing_across_instances as test_fencing_across_instances,
)
from tests.checkpoint_contract import (
    test_generation_below_record_refused as test_generation_below_record_refused,
)
from tests.checkpoint_contract import test_load_unknown_pipeline as test_load_unknown_pipeline
from tests.checkpoint_contract import test_new_epoch_restarts_seq as test_new_epoch_restarts_seq
from tests.checkpoint_contract import test_older_copy_refused as test_older_copy_refused
from tests.checkpoint_contract import (
    test_overwrite_accepts_older_copy as test_overwrite_accepts_older_copy,
)
from tests.checkpoint_contract import (
    test_overwrite_replaces_damaged_snapshot as test_overwrite_replaces_damaged_snapshot,
)
from tests.checkpoint_contract import test_pipelines_independent as test_pipelines_independent
from tests.checkpoint_contract import test_save_load_round_trip as test_save_load_round_trip
from tests.checkpoint_contract import test_stale_epoch_refused as test_stale_epoch_refused
from tests.checkpoint_contract import (
    test_status_of_consistent_store as test_status_of_consistent_store,
)
from tests.checkpoint_contract import test_unclaimed_epoch_refused as test_unclaimed_epoch_refused
from tests.checkpoint_contract import (
    test_unserialisable_state_refused as test_unserialisable_state_refused,
)
from tests.checkpoint_contract import (
    test_wrong_owner_same_epoch_refused as test_wrong_owner_same_epoch_refused,
)
from tests.checkpoint_contract import (
    test_zombie_cannot_overwrite_new_owner as test_zombie_cannot_overwrite_new_owner,
)

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


class S3Tamper:
    """Damage in the bucket: the checkpoint object of ``orders`` (the record object stays)."""

    durable = True

    def __init__(self, store: Store) -> None:
        self.store = store
        self.key = PREFIX + "orders.checkpoint.json"
        self.where = f"s3://{store.bucket}/{self.key}"

    async def read(self) -> bytes:
        """The checkpoint object (claim and snapshot)."""
        return await self.store.get(self.key)

    async def write(self, data: bytes) -> None:
        """Overwrite the checkpoint object."""
        await self.store.put(self.key, data)

    async def copy(self) -> object:
        """The checkpoint object's bytes."""
        return await self.read()

    async def restore(self, copy: object) -> None:
        """Put the copied object back, as restoring an older object version would."""
        assert isinstance(copy, bytes)
        await self.write(copy)

    async def delete(self) -> None:
        """Delete the checkpoint object."""
        await self.store.client.delete_object(Bucket=self.store.bucket, Key=self.key)


@pytest.fixture
def tamper(store: Store) -> S3Tamper:
    """Raw access to the checkpoint object of ``orders``, for the damage tests."""
    return S3Tamper(store)


@pytest.fixture
async def twin_backends(store: Store) -> AsyncIterator[tuple[S3Checkpoints, S3Checkpoints]]:
    """Two backends on one bucket (two processes' view), closed after the test."""
    first, second = make_backend(store), make_backend(store)
    yield first, second
    await first.aclose()
    await second.aclose()


def claim_before_first_write(
    monkeypatch: pytest.MonkeyPatch, writer: S3Checkpoints, rival: S3Checkpoints, owner: str
) -> list[int]:
    """Make ``rival`` claim ``orders`` for ``owner`` just before ``writer``'s first write.

    The claim lands between the writer's read and its conditional write, the
    race the ETag condition exists for; the returned list receives its epoch.
    """
    real_write = S3Checkpoints._write
    epochs: list[int] = []

    async def write_after_rival_claim(
        self: S3Checkpoints,
        client: Any,
        pipeline: str,
        body: bytes,
        etag: str | None,
        attempt: int,
    ) -> bool:
        if self is writer and not epochs:
            epochs.append((await rival.claim("orders", owner)).epoch)
        return await real_write(self, client, pipeline, body, etag, attempt)

    monkeypatch.setattr(S3Checkpoints, "_write", write_after_rival_claim)
    return epochs


async def test_claim_between_check_and_write_fences_zombie(
    twin_backends: tuple[S3Checkpoints, S3Checkpoints], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim after a zombie's check makes its conditional write fail; the retry refuses."""
    zombie, heir = twin_backends
    await zombie.claim("orders", "zombie")
    raced = claim_before_first_write(monkeypatch, zombie, heir, "heir")
    with pytest.raises(FencedError) as caught:
        await zombie.save(snapshot(1, "zombie", seq=1))
    monkeypatch.undo()
    expected = ([2], 2, None)
    assert expected == (raced, caught.value.current_epoch, await heir.load("orders"))


async def test_claim_retries_a_lost_race(
    twin_backends: tuple[S3Checkpoints, S3Checkpoints],
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim whose conditional write loses to another claim re-reads and takes the next epoch."""
    first, second = twin_backends
    await first.claim("orders", "a")
    raced = claim_before_first_write(monkeypatch, first, second, "b")
    claim = await first.claim("orders", "c")
    monkeypatch.undo()
    stored = orjson.loads(await store.get(PREFIX + "orders.checkpoint.json"))
    expected = ([2], (3, "c"), (3, "c"))
    assert expected == (raced, (claim.epoch, claim.owner), (stored["epoch"], stored["owner"]))


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
    kept = ".history/00000000000000000101.json"  # the kept copy of generation 101
    expected_keys = [
        PREFIX + "..%2Fescape.checkpoint.json",
        PREFIX + "..%2Fescape.generation.json",
        PREFIX + "..%2Fescape" + kept,
        PREFIX + "a%2Fb.checkpoint.json",
        PREFIX + "a%2Fb.generation.json",
        PREFIX + "a%2Fb" + kept,
        PREFIX + "x.checkpoint.checkpoint.json",
        PREFIX + "x.checkpoint.generation.json",
        PREFIX + "x.checkpoint" + kept,
    ]
    assert ([snapshot(1, "a", seq=1, pipeline=n) for n in names], expected_keys) == (
        loaded,
        await store.keys(),
    )


async def test_cli_shows_and_accepts_a_rolled_back_object(
    backend: CheckpointBackend, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """``riprap checkpoint show|reset s3://...`` reports an older object, then accepts it."""
    tamper = S3Tamper(store)
    await backend.claim("orders", "a")
    await backend.save(snapshot(1, "a", seq=1))
    older = await tamper.copy()
    await backend.save(snapshot(1, "a", seq=2))
    await tamper.restore(older)
    location = ["s3://" + store.bucket + "/" + PREFIX, "--endpoint-url", store.endpoint]
    shown = await anyio.to_thread.run_sync(main, ["checkpoint", "show", *location])
    show_out = capsys.readouterr().out
    reset = await anyio.to_thread.run_sync(main, ["checkpoint", "reset", *location, "--yes"])
    reset_out = capsys.readouterr().out
    claim = await backend.claim("orders", "b")
    expected = (1, True, True, 0, "generation 103", {"orders-0": 10, "orders-1": 7})
    assert expected == (
        shown,
        "consistent   NO" in show_out,
        "stored 101, recorded 102" in show_out,
        reset,
        reset_out.strip().rpartition("now ")[2].partition(",")[0],
        dict(claim.checkpoint.positions) if claim.checkpoint else None,
    )
