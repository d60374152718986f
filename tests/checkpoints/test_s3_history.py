"""S3Checkpoints keeps the last snapshots too: put after the fenced save, verified when read."""

from __future__ import annotations

import pytest

from riprap.checkpoints import FencedError
from riprap.connectors.s3 import S3Checkpoints
from tests.checkpoint_contract import snapshot
from tests.connectors.s3.conftest import Store, client_config
from tests.connectors.s3.conftest import bucket as bucket
from tests.connectors.s3.conftest import moto_endpoint as moto_endpoint
from tests.connectors.s3.conftest import store as store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]

KEPT = 3


def backend_of(endpoint: str, bucket: str) -> S3Checkpoints:
    """An S3 backend on the moto server keeping ``KEPT`` snapshots."""
    return S3Checkpoints(
        bucket, "state/", endpoint_url=endpoint, client_config=client_config(), history=KEPT
    )


async def test_the_last_snapshots_are_kept_and_older_ones_deleted(
    moto_endpoint: str, bucket: str, store: Store
) -> None:
    """Of 5 saves the last 3 and the ladder's one are kept, newest first; a fenced save adds none.

    101 and 102 are 4 and 3 saves behind 105: one band, whose oldest stays.
    """
    backend = backend_of(moto_endpoint, bucket)
    claim = await backend.claim("orders", "a")
    for seq in range(1, 6):
        await backend.save(snapshot(claim.epoch, "a", seq))
    await backend_of(moto_endpoint, bucket).claim("orders", "b")
    with pytest.raises(FencedError):
        await backend.save(snapshot(claim.epoch, "a", 6))
    kept = await backend.history("orders")
    keys = await store.keys("state/orders.history/")
    assert [105, 104, 103, 101] == [cp.generation for cp in kept]
    assert 4 == len(keys)
    assert kept[0] == await backend.load("orders")
