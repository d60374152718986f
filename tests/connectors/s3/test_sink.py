"""S3Sink and S3DeadLetters: deterministic names, idempotent overwrite, formats, letters."""

from __future__ import annotations

import gzip
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from riprap import Batch, ConfigError, DataError, Sink, SourceBatch
from riprap.connectors.s3 import S3DeadLetters, S3Sink
from riprap.deadletters import DeadLetter
from riprap.lowlevel import Ack, SourceOrigin
from riprap.observability import Redactor
from tests.connectors._origins import joined

from .conftest import client_config

if TYPE_CHECKING:
    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]


def batch_of(values: list[Any], partition: str = "in", start: int = 0) -> Batch:
    """A batch straight from a source partition, starting at ``start``."""
    source = SourceBatch(partition, values, start=start)
    return Batch(list(values), Ack(lambda: None), SourceOrigin(source))


def make_sink(store: Store, **options: Any) -> S3Sink:
    """A sink writing under ``out/`` in the test's bucket."""
    return S3Sink(
        store.bucket, "out/", endpoint_url=store.endpoint, client_config=client_config(), **options
    )


async def write_all(sink: S3Sink, *batches: Batch) -> None:
    """Open the sink, write the batches, flush and close."""
    await sink.open()
    try:
        for batch in batches:
            await sink.write(batch)
        await sink.flush()
    finally:
        await sink.aclose()


async def test_is_a_sink() -> None:
    """S3Sink satisfies the Sink protocol and declares itself idempotent."""
    sink = S3Sink("bucket")
    assert (True, True) == (isinstance(sink, Sink), sink.idempotent)


async def test_object_names_follow_positions(store: Store) -> None:
    """Each batch becomes one object named by its partition and first and last offsets."""
    sink = make_sink(store)
    await write_all(sink, batch_of([{"n": 1}, {"n": 2}]), batch_of([{"n": 3}], start=2))
    expected = [
        "out/in/00000000000000000000-00000000000000000001.jsonl",
        "out/in/00000000000000000002-00000000000000000002.jsonl",
    ]
    assert expected == await store.keys("out/")
    assert b'{"n":1}\n{"n":2}\n' == await store.get(expected[0])


async def test_replay_overwrites_same_object(store: Store) -> None:
    """Writing the same records again (a replay) rewrites the same object with the same bytes."""
    await write_all(make_sink(store), batch_of([b'{"a":1}', b'{"a":2}'], start=10))
    key = "out/in/00000000000000000010-00000000000000000011.jsonl"
    first = (await store.head(key))["ETag"]
    await write_all(make_sink(store), batch_of([b'{"a":1}', b'{"a":2}'], start=10))
    assert ([key], first) == (await store.keys("out/"), (await store.head(key))["ETag"])


async def test_partitions_split_into_objects(store: Store) -> None:
    """A batch mixing two partitions writes one object per partition, with encoded names."""
    left = SourceBatch("s3://in/a.jsonl", [1, 2], start=0)
    right = SourceBatch("s3://in/b.jsonl", [3], start=5)
    await write_all(make_sink(store), Batch([1, 2, 3], Ack(lambda: None), joined(left, right)))
    expected = [
        "out/s3%3A%2F%2Fin%2Fa.jsonl/00000000000000000000-00000000000000000001.jsonl",
        "out/s3%3A%2F%2Fin%2Fb.jsonl/00000000000000000005-00000000000000000005.jsonl",
    ]
    assert expected == await store.keys("out/")


async def test_gzip_is_deterministic(store: Store) -> None:
    """Gzipped objects decompress to the lines and are byte-identical when rewritten."""
    batch = [{"id": i} for i in range(3)]
    await write_all(make_sink(store, gzip=True), batch_of(batch))
    key = "out/in/00000000000000000000-00000000000000000002.jsonl.gz"
    first = await store.get(key)
    await write_all(make_sink(store, gzip=True), batch_of(batch))
    lines = [orjson.loads(line) for line in gzip.decompress(first).splitlines()]
    assert (batch, first) == (lines, await store.get(key))


async def test_csv_objects_have_headers(store: Store) -> None:
    """A CSV object starts with the header and holds one row per dict."""
    sink = make_sink(store, format="csv", fieldnames=["id", "name"])
    await write_all(sink, batch_of([{"id": 1, "name": "a"}, {"id": 2}]))
    data = await store.get("out/in/00000000000000000000-00000000000000000001.csv")
    assert b"id,name\r\n1,a\r\n2,\r\n" == data


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({}, {"bad": object()}),
        ({}, {"id": 2, "name": "caf\udce9"}),
        ({"format": "csv", "fieldnames": ["id", "name"]}, {"id": 2, "name": "caf\udce9"}),
    ],
    ids=["json-object", "json-lone-surrogate", "csv-lone-surrogate"],
)
async def test_unencodable_item_is_a_data_error(
    store: Store, options: dict[str, Any], bad: dict[str, Any]
) -> None:
    """An item the format cannot encode (an object JSON does not know, text with a lone
    surrogate) fails the batch with a DataError naming it; nothing is written.
    """
    sink = make_sink(store, **options)
    await sink.open()
    try:
        with pytest.raises(DataError, match=r"in@1"):
            await sink.write(batch_of([{"id": 1, "name": "ok"}, bad]))
    finally:
        await sink.aclose()
    assert [] == await store.keys("out/")


async def test_sse_is_requested(store: Store) -> None:
    """With sse="AES256" every object is stored with server-side encryption."""
    await write_all(make_sink(store, sse="AES256"), batch_of([1]))
    head = await store.head("out/in/00000000000000000000-00000000000000000000.jsonl")
    assert "AES256" == head["ServerSideEncryption"]


def test_invalid_options() -> None:
    """Invalid formats, missing CSV columns and a KMS key without KMS name the option."""
    cases: list[dict[str, Any]] = [
        {"format": "xml"},
        {"format": "csv"},
        {"sse": "rot13"},
        {"sse_kms_key_id": "key"},
    ]
    options = []
    for case in cases:
        with pytest.raises(ConfigError) as caught:
            S3Sink("bucket", **case)
        options.append(caught.value.option)
    assert ["format", "fieldnames", "sse", "sse_kms_key_id"] == options


def letter(offset: int) -> DeadLetter:
    """A dead letter for the record at ``offset``."""
    return DeadLetter.create(
        pipeline="orders",
        stage="parse",
        record=SourceBatch("in", [b"oops"], start=offset).record(0),
        error=DataError("bad record"),
        reason="data_error",
        source="s3",
        attempts=1,
        first_failure_at=1_700_000_000.0,
        last_failure_at=1_700_000_000.0,
        config_hash="test",
        redactor=Redactor(),
    )


async def test_dead_letters_one_object_per_write(store: Store) -> None:
    """Each write is one object named from the letter ids; rewriting keeps one copy per id."""
    dlq = S3DeadLetters(
        store.bucket, "dlq/", endpoint_url=store.endpoint, client_config=client_config()
    )
    first, second = [letter(1), letter(2)], [letter(3)]
    await dlq.open()
    try:
        await dlq.write(first)
        await dlq.write(second)
        await dlq.write(first)  # a replay after a crash
        await dlq.write([])
        stored = await dlq.read()
    finally:
        await dlq.aclose()
    expected_keys = sorted([dlq.object_key(first), dlq.object_key(second)])
    assert (expected_keys, [1, 2, 3]) == (
        await store.keys("dlq/"),
        sorted(d.offset or 0 for d in stored),
    )
