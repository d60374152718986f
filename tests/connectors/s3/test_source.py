"""S3Source: key order, positions, resume inside an object, gzip, CSV, quarantine, polling."""

from __future__ import annotations

import gzip
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from riprap import ConfigError, Source, SourceBatch, SourceContext
from riprap.checkpoints import CheckpointError
from riprap.connectors.s3 import OBJECT_COMPLETE, QuarantinedObject, S3Source
from tests._sources import read_to_end

from .conftest import client_config

if TYPE_CHECKING:
    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]


def make_source(store: Store, **options: Any) -> S3Source:
    """A source reading ``in/`` of the test's bucket."""
    return S3Source(
        store.bucket, "in/", endpoint_url=store.endpoint, client_config=client_config(), **options
    )


def summary(batches: list[SourceBatch]) -> list[tuple[str, list[Any], int, int]]:
    """``(partition key, values, start, end)`` per batch."""
    return [(b.partition.rpartition("/")[2], b.values, b.start, b.end) for b in batches]


def lines(*numbers: int) -> list[bytes]:
    """JSON lines ``{"n": i}``."""
    return [orjson.dumps({"n": n}) for n in numbers]


async def test_is_a_source() -> None:
    """S3Source satisfies the Source protocol."""
    assert isinstance(S3Source("bucket"), Source)


async def test_objects_in_key_order_with_positions(store: Store) -> None:
    """Objects are read in key order, one partition each; the last batch ends at completion."""
    await store.put_lines("in/b.jsonl", lines(3))
    await store.put_lines("in/a.jsonl", lines(0, 1, 2))
    await store.put_lines("other/c.jsonl", lines(9))
    batches = await read_to_end(make_source(store), max_records=2)
    expected = [
        ("a.jsonl", lines(0, 1), 0, 2),
        ("a.jsonl", lines(2), 2, OBJECT_COMPLETE),
        ("b.jsonl", lines(3), 0, OBJECT_COMPLETE),
    ]
    assert expected == summary(batches)
    assert f"s3://{store.bucket}/in/a.jsonl" == batches[0].partition


async def test_lag_counts_the_rest_of_the_object(store: Store) -> None:
    """lag() reports the records of the current object not yet handed over."""
    await store.put_lines("in/a.jsonl", lines(0, 1, 2, 3, 4))
    source = make_source(store)
    await source.open(SourceContext(pipeline="test", positions={}))
    try:
        await source.read(2)
        lag = source.lag()
    finally:
        await source.aclose()
    assert {source.partition_of("in/a.jsonl"): 3} == lag


async def test_empty_lines_are_counted_not_read(store: Store) -> None:
    """Empty lines keep their index as a position but are not records."""
    await store.put("in/a.jsonl", b'{"n":0}\n\r\n{"n":2}\r\n')
    batches = await read_to_end(make_source(store))
    expected = ([b'{"n":0}', b'{"n":2}'], [0, 2], OBJECT_COMPLETE)
    assert expected == (batches[0].values, batches[0].offsets, batches[0].end)


async def test_resume_inside_an_object(store: Store) -> None:
    """A checkpointed position inside an object resumes at that line; complete ones are skipped."""
    await store.put_lines("in/a.jsonl", lines(0, 1))
    await store.put_lines("in/b.jsonl", lines(10, 11, 12, 13))
    source = make_source(store)
    positions = {source.partition_of("in/a.jsonl"): OBJECT_COMPLETE}
    positions[source.partition_of("in/b.jsonl")] = 2
    batches = await read_to_end(source, positions=positions)
    stats = source.statistics()
    assert [("b.jsonl", lines(12, 13), 2, OBJECT_COMPLETE)] == summary(batches)
    assert (2, 1, 1) == (stats.objects_listed, stats.objects_read, stats.objects_skipped)


async def test_resume_at_the_end_completes(store: Store) -> None:
    """A position at the object's line count yields one empty batch that completes it."""
    await store.put_lines("in/a.jsonl", lines(0, 1))
    source = make_source(store)
    batches = await read_to_end(source, positions={source.partition_of("in/a.jsonl"): 2})
    assert [("a.jsonl", [], 2, OBJECT_COMPLETE)] == summary(batches)


async def test_resume_past_the_end_is_an_error(store: Store) -> None:
    """A checkpoint beyond the object's lines (a replaced object) raises CheckpointError."""
    await store.put_lines("in/a.jsonl", lines(0))
    source = make_source(store)
    with pytest.raises(CheckpointError, match="only 1 lines"):
        await read_to_end(source, positions={source.partition_of("in/a.jsonl"): 5})


async def test_gzip_objects(store: Store) -> None:
    """Objects ending in .gz are decompressed; gzip=True forces it for other names."""
    await store.put_lines("in/a.jsonl.gz", lines(0, 1), compress=True)
    await store.put_lines("in/b.jsonl", lines(2), compress=True)
    batches = await read_to_end(make_source(store, gzip=True))
    assert [lines(0, 1), lines(2)] == [b.values for b in batches]


async def test_csv_objects(store: Store) -> None:
    """CSV objects yield dicts; the header is line 0, so rows start at position 1."""
    await store.put("in/a.csv", b"id,name\r\n1,a\r\n\r\n2,b\r\n")
    batches = await read_to_end(make_source(store, format="csv"))
    expected = ([{"id": "1", "name": "a"}, {"id": "2", "name": "b"}], [1, 3])
    assert expected == (batches[0].values, batches[0].offsets)


async def test_corrupt_gzip_is_quarantined(store: Store) -> None:
    """A corrupt gzip object among good ones is copied aside with its reason; the rest is read."""
    await store.put_lines("in/1.jsonl.gz", lines(1), compress=True)
    await store.put("in/2.jsonl.gz", b"this is not gzip at all")
    await store.put_lines("in/3.jsonl.gz", lines(3), compress=True)
    seen: list[QuarantinedObject] = []
    source = make_source(store, quarantine_prefix="quarantine/", on_quarantine=seen.append)
    batches = await read_to_end(source)
    reason = orjson.loads(await store.get("quarantine/in/2.jsonl.gz.reason.json"))
    expected_batches = [
        ("1.jsonl.gz", lines(1), 0, OBJECT_COMPLETE),
        ("2.jsonl.gz", [], 0, OBJECT_COMPLETE),
        ("3.jsonl.gz", lines(3), 0, OBJECT_COMPLETE),
    ]
    assert expected_batches == summary(batches)
    assert (["in/2.jsonl.gz"], "quarantine/in/2.jsonl.gz") == (
        [q.key for q in source.quarantined],
        seen[0].quarantine_key,
    )
    assert b"this is not gzip at all" == await store.get("quarantine/in/2.jsonl.gz")
    assert ("not a valid gzip stream", 1) == (
        reason["reason"][:23],
        source.statistics().objects_quarantined,
    )


async def test_truncated_and_undecodable_objects_are_quarantined(store: Store) -> None:
    """A truncated gzip stream, invalid UTF-8 and a malformed CSV row are each quarantined."""
    whole = gzip.compress(b"".join(line + b"\n" for line in lines(*range(100))))
    await store.put("in/a.jsonl.gz", whole[: len(whole) // 2])
    await store.put("in/b.jsonl", b'{"n": "\xff"}\n')
    await store.put("csv/c.csv", b"id,name\n1\n")
    jsonl = make_source(store)
    await read_to_end(jsonl)
    csv_source = S3Source(
        store.bucket,
        "csv/",
        format="csv",
        endpoint_url=store.endpoint,
        client_config=client_config(),
    )
    await read_to_end(csv_source)
    reasons = [q.reason for q in [*jsonl.quarantined, *csv_source.quarantined]]
    expected = [
        "truncated gzip stream",
        "not valid UTF-8 at byte 7: invalid start byte",
        "line 2: expected 2 fields (the header's), got 1",
    ]
    assert expected == reasons


async def test_polling_picks_up_new_objects(store: Store) -> None:
    """With poll_interval the source keeps listing and reads objects added later."""
    await store.put_lines("in/a.jsonl", lines(0))
    source = make_source(store, poll_interval=0.01)
    await source.open(SourceContext(pipeline="test", positions={}))
    try:
        with anyio.fail_after(10):
            first = await source.read(10)
            await store.put_lines("in/b.jsonl", lines(1))
            second = await source.read(10)
        with anyio.move_on_after(0.05) as idle:
            await source.read(10)
    finally:
        await source.aclose()
    values = [batch.values if batch is not None else None for batch in (first, second)]
    assert ([lines(0), lines(1)], True) == (values, idle.cancelled_caught)


def test_invalid_options() -> None:
    """A bad format, poll interval or a quarantine prefix inside the source prefix is refused."""
    cases: list[dict[str, Any]] = [
        {"format": "xml"},
        {"poll_interval": 0},
        {"quarantine_prefix": "in/bad/"},
    ]
    options = []
    for case in cases:
        with pytest.raises(ConfigError) as caught:
            S3Source("bucket", "in/", **case)
        options.append(caught.value.option)
    assert ["format", "poll_interval", "quarantine_prefix"] == options
