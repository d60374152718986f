"""S3Source split among workers on one machine: the keys by a stable hash, on top of key_filter."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import orjson
import pytest

from riprap.connectors.s3 import S3Source
from tests._sources import read_to_end

from .conftest import client_config

if TYPE_CHECKING:
    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]


async def test_workers_read_disjoint_keys_that_together_are_all(store: Store) -> None:
    """Each key is read by worker crc32(key) % 3 alone; key_filter still applies to every share."""
    keys = [f"in/{n:02}.jsonl" for n in range(12)]
    for n, key in enumerate(keys):
        await store.put_lines(key, [orjson.dumps({"n": n})])
    source = S3Source(
        store.bucket,
        "in/",
        endpoint_url=store.endpoint,
        client_config=client_config(),
        key_filter=lambda key: not key.endswith("11.jsonl"),
    )
    owners = {}
    for i in range(3):
        for batch in await read_to_end(source.for_worker(i, 3)):
            owners[batch.partition.removeprefix(f"s3://{store.bucket}/")] = i
    expected = {key: zlib.crc32(key.encode()) % 3 for key in keys[:-1]}
    assert expected == owners
