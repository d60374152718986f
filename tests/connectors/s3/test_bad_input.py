"""S3Source and bad input: a byte order mark and lone CR line endings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from riprap.connectors.s3 import OBJECT_COMPLETE, S3Source
from tests._sources import read_to_end

from .conftest import client_config

if TYPE_CHECKING:
    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]


async def test_bom_and_lone_cr_in_json_lines(store: Store) -> None:
    """A BOM is not part of the first line, and a lone CR ends a line."""
    await store.put("in/a.jsonl", b'\xef\xbb\xbf{"n": 1}\r{"n": 2}\r\r{"n": 3}\r\n')
    source = S3Source(
        store.bucket, "in/", endpoint_url=store.endpoint, client_config=client_config()
    )
    batches = await read_to_end(source)
    expected = [([b'{"n": 1}', b'{"n": 2}', b'{"n": 3}'], [0, 1, 3], OBJECT_COMPLETE)]
    assert expected == [(b.values, [b.offset_of(i) for i in range(len(b))], b.end) for b in batches]


async def test_bom_does_not_rename_the_first_csv_column(store: Store) -> None:
    """A UTF-8 BOM before a CSV header does not end up in the first column's name."""
    await store.put("in/a.csv", b"\xef\xbb\xbfid,name\r\n1,a\r\n")
    source = S3Source(
        store.bucket,
        "in/",
        format="csv",
        endpoint_url=store.endpoint,
        client_config=client_config(),
    )
    batches = await read_to_end(source)
    assert [[{"id": "1", "name": "a"}]] == [b.values for b in batches]
