"""S3Source: an object written over since the checkpoint read it is refused by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

import riprap
from riprap.checkpoints import CheckpointError, SqliteCheckpoints
from riprap.cli import main
from riprap.connectors.memory import MemorySink
from riprap.connectors.s3 import OBJECT_COMPLETE, S3Source
from tests._sources import read_to_end

from .conftest import client_config

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]


def orders(first: int, count: int) -> list[bytes]:
    """JSON lines ``{"id": i}`` from ``first`` on."""
    return [orjson.dumps({"id": i}) for i in range(first, first + count)]


def source_of(store: Store) -> S3Source:
    """A source reading ``in/`` of the test's bucket."""
    return S3Source(store.bucket, "in/", endpoint_url=store.endpoint, client_config=client_config())


async def ids_read(store: Store, checkpoints: Path) -> list[int]:
    """Run ``in/`` through a pipeline with SQLite checkpoints; the ids the sink got."""
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("landing", checkpoint=SqliteCheckpoints(checkpoints))
        .source(source_of(store))
        .map("parse", orjson.loads)
        .sink(sink)
    )
    await pipeline.run()
    return [value["id"] for value in sink.values]


async def test_an_object_written_over_after_it_was_read_stops_the_run(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read whole, then written over: the next run names it; set back to 0, it is read anew."""
    checkpoints = tmp_path / "checkpoints.db"
    await store.put_lines("in/a.jsonl", orders(0, 3))
    await store.put_lines("in/b.jsonl", orders(100, 2))
    assert [0, 1, 2, 100, 101] == await ids_read(store, checkpoints)
    await store.put_lines("in/b.jsonl", orders(200, 4))  # another version under the same key
    await store.put_lines("in/c.jsonl", orders(300, 1))
    with pytest.raises(CheckpointError) as caught:
        await ids_read(store, checkpoints)
    partition = f"s3://{store.bucket}/in/b.jsonl"
    assert str(caught.value).startswith(
        f"{partition}: the checkpoint has it read whole, but the object was written over since"
    )
    argv = ["checkpoint", "set", str(checkpoints), f"{partition}=0"]
    assert 0 == await anyio.to_thread.run_sync(main, argv)
    capsys.readouterr()
    assert [200, 201, 202, 203, 300] == await ids_read(store, checkpoints)
    assert [] == await ids_read(store, checkpoints)


async def test_an_object_resumed_inside_must_be_the_one_it_was_read_in(store: Store) -> None:
    """A position inside an object resumes only under the ETag noted with it."""
    await store.put_lines("in/a.jsonl", orders(0, 4))
    source = source_of(store)
    partition = source.partition_of("in/a.jsonl")
    first = await read_to_end(source)
    etag = source.identities()[partition]
    assert (OBJECT_COMPLETE, 16) == (first[-1].end, len(etag))
    resumed = await read_to_end(source, positions={partition: 2}, identities={partition: etag})
    assert [orders(2, 2)] == [batch.values for batch in resumed]
    with pytest.raises(CheckpointError, match="read up to line 2, but the object was written"):
        await read_to_end(
            source, positions={partition: 2}, identities={partition: "0123456789abcdef"}
        )
