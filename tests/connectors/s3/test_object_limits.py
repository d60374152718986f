"""``max_object_bytes``: an S3 object is held whole while it is read, so its size is bounded.

A larger object is never downloaded (its listed or announced size tells), a
gzip object stops decompressing at the limit (a few hundred KiB can hold
gigabytes), and neither is lost: the source quarantines it for a requeue with
a higher limit, the object reader dead-letters the record that named it.
"""

from __future__ import annotations

import gzip
import zlib
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
from riprap import ConfigError
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.connectors.s3 import S3ObjectReader, S3Source
from riprap.connectors.s3._formats import CorruptObjectError, ObjectTooLargeError, decode_object
from riprap.deadletters import SqliteDeadLetters, read_dead_letters
from tests._sources import read_to_end_traced

from ._proxy import fault_proxy
from .conftest import client_config

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]

LIMIT = 1024 * 1024
"""``max_object_bytes`` of these tests: 1 MiB."""
BOMB_BYTES = 128 * 1024 * 1024
"""What the decompression bomb holds once decompressed."""


def jsonl(numbers: range) -> bytes:
    """JSON Lines of ``{"n": ...}`` records."""
    return b"".join(orjson.dumps({"n": n}) + b"\n" for n in numbers)


def bomb(size: int = BOMB_BYTES) -> bytes:
    """A gzip stream of ``size`` zero bytes, compressed a MiB at a time (about 1/1000 of it)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join([*parts, compressor.flush()])


def big() -> bytes:
    """JSON Lines of 2 MiB and more: twice the limit."""
    return jsonl(range(200_000))


def numbers(values: list[Any]) -> list[int]:
    """The ``n`` of every JSON line."""
    return [orjson.loads(value)["n"] for value in values]


async def test_objects_over_the_limit_are_quarantined_and_never_read_whole(store: Store) -> None:
    """An object listed over the limit is copied aside by S3 without a GET; a gzip bomb under
    it stops decompressing at the limit; the objects beside them are read; nothing is lost.
    """
    small, large, compressed = jsonl(range(10)), big(), bomb()
    assert len(compressed) < LIMIT < len(large)
    await store.put("in/a.jsonl", small)
    await store.put("in/b.jsonl", large)
    await store.put("in/c.jsonl.gz", compressed)
    async with fault_proxy(store.endpoint) as (proxy, url):
        source = S3Source(
            store.bucket,
            "in/",
            quarantine_prefix="quarantine/",
            max_object_bytes=LIMIT,
            endpoint_url=url,
            client_config=client_config(),
        )
        batches, peak = await read_to_end_traced(source, 1_000)
    assert list(range(10)) == numbers([v for b in batches for v in b.values])
    assert peak < 16 * LIMIT  # gzip.decompress would have made 128 MiB of it
    assert 0 == proxy.requests["GET", f"/{store.bucket}/in/b.jsonl"]
    assert ["in/b.jsonl", "in/c.jsonl.gz"] == [q.key for q in source.quarantined]
    assert (large, compressed) == (
        await store.get("quarantine/in/b.jsonl"),
        await store.get("quarantine/in/c.jsonl.gz"),
    )
    notes = [
        orjson.loads(await store.get(f"quarantine/in/{name}.reason.json"))["reason"]
        for name in ("b.jsonl", "c.jsonl.gz")
    ]
    assert [
        f"{len(large)} bytes, over max_object_bytes ({LIMIT}); raise it to read the object",
        f"more than {LIMIT} bytes once decompressed, over max_object_bytes; "
        "raise it to read the object",
    ] == notes
    assert 2 == source.statistics().objects_quarantined


async def test_a_requeue_with_a_higher_limit_reads_the_set_aside_object(store: Store) -> None:
    """Raising ``max_object_bytes`` and requeueing delivers every record of the large object
    once; a run at the old limit counts it as quarantined and delivers nothing of it.
    """
    large = big()
    await store.put("in/b.jsonl", large)

    def source(limit: int) -> S3Source:
        return S3Source(
            store.bucket,
            "in/",
            quarantine_prefix="quarantine/",
            max_object_bytes=limit,
            endpoint_url=store.endpoint,
            client_config=client_config(),
        )

    async def run(read_from: S3Source, name: str) -> tuple[list[int], riprap.RunReport]:
        sink = MemorySink()
        pipeline = (
            riprap.Pipeline(name, checkpoint=MemoryCheckpoints()).source(read_from).sink(sink)
        )
        report = await pipeline.run()
        return numbers(sink.values), report

    first, report = await run(source(LIMIT), "copy")
    assert ([], 1) == (first, report.source_outcomes.get("objects_quarantined"))
    again, _ = await run(source(len(large)).requeue(), "copy.requeue")
    assert list(range(200_000)) == again


async def test_the_object_reader_dead_letters_objects_over_the_limit(
    store: Store, tmp_path: Path
) -> None:
    """``S3ObjectReader`` refuses an object announced over the limit and a gzip bomb with
    ``object_too_large`` (dead-lettered); the records naming other objects go on.
    """
    await store.put("in/a.jsonl", jsonl(range(3)))
    await store.put("in/b.jsonl", big())
    await store.put("in/c.jsonl.gz", bomb())
    sink = MemorySink()
    reader = S3ObjectReader(
        store.bucket,
        max_object_bytes=LIMIT,
        endpoint_url=store.endpoint,
        client_config=client_config(),
    )
    pipeline = (
        riprap.Pipeline(
            "read",
            checkpoint=MemoryCheckpoints(),
            dead_letter=SqliteDeadLetters(tmp_path / "dlq.db"),
        )
        .source(IterableSource("keys", ["in/b.jsonl", "in/a.jsonl", "in/c.jsonl.gz"]))
        .flat_map("read", reader)
        .sink(sink)
    )
    await pipeline.run()
    letters = list(read_dead_letters(tmp_path / "dlq.db"))
    assert [0, 1, 2] == numbers(sink.values)
    assert [("in/b.jsonl", "object_too_large"), ("in/c.jsonl.gz", "object_too_large")] == [
        (letter.original_value(), letter.reason) for letter in letters
    ]
    assert f"over max_object_bytes ({LIMIT})" in letters[0].message
    assert "once decompressed" in letters[1].message


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1"])
def test_max_object_bytes_must_be_a_positive_int(value: Any) -> None:
    """A limit that is not a positive number of bytes is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match="max_object_bytes"):
        S3Source("bucket", max_object_bytes=value)
    with pytest.raises(ConfigError, match="max_object_bytes"):
        S3ObjectReader("bucket", max_object_bytes=value)


def decode(data: bytes, limit: int = LIMIT) -> list[Any]:
    """The values of a gzip JSON Lines object of at most ``limit`` bytes."""
    values, _, _ = decode_object(
        "a.jsonl.gz", data, format="jsonl", gzip=None, encoding="utf-8", delimiter=",", limit=limit
    )
    return values


def test_bounded_gunzip_reads_what_gzip_reads() -> None:
    """Several members and zero padding after them read as ``gzip.decompress`` reads them."""
    data = gzip.compress(jsonl(range(3))) + gzip.compress(jsonl(range(3, 5))) + bytes(7)
    assert gzip.decompress(data).split() == decode(data)


def test_the_limit_is_inclusive() -> None:
    """An object of exactly ``limit`` bytes once decompressed is read; one byte more is not."""
    exact = jsonl(range(10))
    assert 10 == len(decode(gzip.compress(exact), limit=len(exact)))
    with pytest.raises(ObjectTooLargeError, match="once decompressed"):
        decode(gzip.compress(exact), limit=len(exact) - 1)
    with pytest.raises(ObjectTooLargeError, match=r"^\d+ bytes, over max_object_bytes \(5\)"):
        decode(gzip.compress(exact), limit=5)  # the stored bytes alone are over


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not gzip at all", "not a valid gzip stream"),
        (gzip.compress(jsonl(range(100)))[:-20], "truncated gzip stream"),
        (gzip.compress(jsonl(range(100)))[:-4] + bytes(4), "not a valid gzip stream"),
        (gzip.compress(b"x\n") + b"garbage", "not a valid gzip stream"),
    ],
    ids=["not gzip", "truncated", "wrong length", "trailing garbage"],
)
def test_a_broken_gzip_stream_is_corrupt(data: bytes, reason: str) -> None:
    """Bad, truncated or failing gzip is a CorruptObjectError that says which, never a crash."""
    with pytest.raises(CorruptObjectError, match=reason):
        decode(data)
