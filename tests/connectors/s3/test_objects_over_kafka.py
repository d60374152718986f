"""S3 objects spread over the members of a consumer group: their keys go through Kafka."""

from __future__ import annotations

import gzip
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

import riprap
from riprap.connectors.kafka import KafkaCheckpoints, KafkaSource, json_value
from riprap.connectors.s3 import S3ObjectReader
from riprap.connectors.sqlite import SqliteSink, read_table
from riprap.deadletters import JsonLinesDeadLetters, read_dead_letters

from ..kafka.conftest import FAST_GROUP
from .conftest import client_config

if TYPE_CHECKING:
    from pathlib import Path

    from ..kafka.conftest import KafkaHelper
    from .conftest import Store

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

OBJECTS = 12
LINES = 20


def notification(bucket: str, key: str) -> bytes:
    """An S3 event notification about one new object (its key URL-encoded, as S3 sends it)."""
    encoded = key.replace(" ", "+")
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}}}
    record["s3"]["object"] = {"key": encoded}  # type: ignore[index]
    return orjson.dumps({"Records": [record]})


def member(
    kafka: KafkaHelper, topic: str, group: str, store: Store, folder: Path, name: str
) -> tuple[riprap.Pipeline, KafkaSource]:
    source = KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
    )
    reader = S3ObjectReader(
        store.bucket, endpoint_url=store.endpoint, client_config=client_config()
    )
    pipeline = (
        riprap.Pipeline(
            "objects",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.05,
            batch_size=2,
            dead_letter=JsonLinesDeadLetters(folder / f"dlq-{name}.jsonl"),
            dlq_guard=None,
        )
        .source(source)
        .flat_map("read", reader, concurrency=2)
        .map("decode", json_value)
        .sink(SqliteSink(folder / "out.db", table="lines", key="id", timeout=30.0))
    )
    return pipeline, source


async def test_two_members_read_every_object_once_and_dead_letter_the_bad_ones(
    kafka: KafkaHelper, store: Store, tmp_path: Path
) -> None:
    """Notifications (and a plain key) for twelve objects, one corrupt and one missing, read
    by two members of a group: every line lands once, the bad two are dead-lettered by name."""
    keys = [f"in/part {n}.jsonl" + (".gz" if n % 3 == 0 else "") for n in range(OBJECTS)]
    for n, key in enumerate(keys):
        data = b"".join(orjson.dumps({"id": f"{n}-{i}"}) + b"\n" for i in range(LINES))
        await store.put(key, gzip.compress(data) if key.endswith(".gz") else data)
    await store.put("in/broken.jsonl.gz", b"\x1f\x8b not gzip")
    messages: list[tuple[bytes | None, bytes, list[Any]]] = [
        (key.encode(), notification(store.bucket, key), []) for key in keys[1:]
    ]
    messages.append((keys[0].encode(), keys[0].encode(), []))  # a producer's plain key
    messages.append((b"broken", notification(store.bucket, "in/broken.jsonl.gz"), []))
    messages.append((b"gone", notification(store.bucket, "in/gone.jsonl"), []))
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    one, one_source = member(kafka, topic, group, store, tmp_path, "one")
    two, two_source = member(kafka, topic, group, store, tmp_path, "two")

    async def rows() -> int:
        database = tmp_path / "out.db"
        return len(await read_table(database, "lines")) if database.exists() else 0

    async with one.open() as first, two.open() as second:
        for _ in range(3_000):  # both members have partitions (60 s at most)
            if one_source.lag() and two_source.lag():
                break
            await anyio.sleep(0.02)
        shares = (set(one_source.lag()), set(two_source.lag()))
        await kafka.produce(topic, messages)
        for _ in range(3_000):  # every line written (60 s at most)
            if await rows() >= OBJECTS * LINES:
                break
            await anyio.sleep(0.02)
        second.stop()
        first.stop()
    expected = {f"{n}-{i}" for n in range(OBJECTS) for i in range(LINES)}
    assert expected == set(await read_table(tmp_path / "out.db", "lines"))
    letters = [
        letter
        for name in ("one", "two")
        if (tmp_path / f"dlq-{name}.jsonl").exists()
        for letter in read_dead_letters(tmp_path / f"dlq-{name}.jsonl")
    ]
    reasons = sorted((letter.reason, letter.message.split(" ")[0]) for letter in letters)
    bucket = store.bucket
    assert [
        ("corrupt_object", f"s3://{bucket}/in/broken.jsonl.gz"),
        ("missing_object", f"s3://{bucket}/in/gone.jsonl"),
    ] == reasons
    assert all(shares), f"each member reads some of the topic: {shares}"
    assert 3 == len(shares[0] | shares[1])
