"""A KafkaChangelog under damage: a commit cut short, foreign records, too few partitions."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import orjson
import pytest

pytest.importorskip("aiokafka")

from riprap.connectors.kafka import KafkaChangelog
from riprap.state import StateStoreError

if TYPE_CHECKING:
    from .conftest import KafkaHelper

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


async def opened(kafka: KafkaHelper, topic: str) -> KafkaChangelog:
    changelog = KafkaChangelog(kafka.bootstrap, topic=topic)
    await changelog.open("p")
    return changelog


async def test_a_commit_cut_short_is_dropped_and_undone_in_the_topic(kafka: KafkaHelper) -> None:
    """Changes after the last mark are not restored, and the values they replaced go back."""
    source = await kafka.create_topic(1)
    topic = f"{source}-changelog"
    partition = f"{source}:0"
    changelog = await opened(kafka, topic)
    try:
        await changelog.restore(partition)  # creates the topic
        await changelog.write(partition, {"count": {"s:a": ("1", None), "s:b": ("5", None)}}, 10)
        await changelog.flush()
        # A commit that died before its mark: a new value for a, a delete of b, a new c.
        cut_short: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]] = [
            (orjson.dumps([partition, "count", "s:a"]), b'["2",null]', []),
            (orjson.dumps([partition, "count", "s:b"]), None, []),
            (orjson.dumps([partition, "count", "s:c"]), b'["7",null]', []),
        ]
        await kafka.produce(topic, cut_short)  # type: ignore[arg-type]  # a tombstone
        restored = await changelog.restore(partition)
    finally:
        await changelog.aclose()
    assert (10, {"count": {"s:a": ("1", None), "s:b": ("5", None)}}) == (
        restored.position,
        restored.values,
    )
    # Compaction keeps each key's last record: for every key, the committed value.
    last: dict[bytes, bytes | None] = {}
    for message in await kafka.read_all(topic, 8, within=5.0):
        last[message.key] = message.value
    assert b'["1",null]' == last[orjson.dumps([partition, "count", "s:a"])]
    assert b'["5",null]' == last[orjson.dumps([partition, "count", "s:b"])]
    assert last[orjson.dumps([partition, "count", "s:c"])] is None
    assert {"position": 10} == orjson.loads(last[orjson.dumps([partition])] or b"")


async def test_a_foreign_record_in_the_topic_is_named(kafka: KafkaHelper) -> None:
    """A topic shared with something else is refused, naming the record, not misread."""
    source = await kafka.create_topic(1)
    topic = f"{source}-changelog"
    changelog = await opened(kafka, topic)
    try:
        await changelog.restore(f"{source}:0")
        await kafka.produce(topic, [(b"order-17", b'{"id": 17}', [])])
        with pytest.raises(StateStoreError, match="offset 0 of partition 0 is not a riprap"):
            await changelog.restore(f"{source}:0")
    finally:
        await changelog.aclose()


async def test_a_topic_with_too_few_partitions_is_refused(kafka: KafkaHelper) -> None:
    """Source partition 3 needs changelog partition 3: a smaller existing topic is named."""
    source = await kafka.create_topic(4)
    small = await kafka.create_topic(2)
    changelog = await opened(kafka, small)
    try:
        with pytest.raises(StateStoreError, match=r"has 2 partitions.*partition 3"):
            await changelog.restore(f"{source}:3")
    finally:
        await changelog.aclose()


async def test_a_partition_that_is_not_kafkas_is_a_config_error(kafka: KafkaHelper) -> None:
    """Keyed state of a file partition cannot go to a Kafka changelog: the error says so."""
    import riprap

    changelog = await opened(kafka, f"t-{uuid.uuid4().hex[:8]}-changelog")
    try:
        with pytest.raises(riprap.ConfigError, match="keeps the state of Kafka partitions"):
            await changelog.restore("orders.jsonl")
    finally:
        await changelog.aclose()


async def test_a_large_state_value_is_logged_and_restored(kafka: KafkaHelper) -> None:
    """A value of 200 KB (past a producer batch's 16 KiB) is logged in a batch of its own, whole."""
    source = await kafka.create_topic(1)
    partition = f"{source}:0"
    large = orjson.dumps(["x" * 200_000]).decode()
    changelog = await opened(kafka, f"{source}-changelog")
    try:
        await changelog.restore(partition)
        await changelog.write(partition, {"count": {"s:a": (large, None)}}, 3)
        await changelog.flush()
        restored = await changelog.restore(partition)
    finally:
        await changelog.aclose()
    assert (3, {"count": {"s:a": (large, None)}}) == (restored.position, restored.values)
