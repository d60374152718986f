"""Handing partitions over: a member's own checkpoint never drags the group back."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

from aiokafka.errors import CommitFailedError

import riprap
import riprap.checkpoints
from riprap import SourceBatch, SourceContext
from riprap.connectors.kafka import KafkaSource, json_value
from riprap.connectors.memory import MemorySink
from riprap.testing import wait_until

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import KafkaHelper, Message

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

DEADLINE = 30.0


def orders(prefix: str, count: int) -> list[Message]:
    """``count`` JSON orders keyed ``<prefix><i>``."""
    return [
        (f"{prefix}{i}".encode(), orjson.dumps({"key": f"{prefix}{i}"}), []) for i in range(count)
    ]


def make_source(kafka: KafkaHelper, topic: str, group: str) -> KafkaSource:
    """A source on ``topic`` with the fast test group settings."""
    return KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
    )


async def run_member(
    kafka: KafkaHelper, topic: str, group: str, database: Path, until: int
) -> list[str]:
    """Run one member with its own SQLite store until the group has committed ``until``."""
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "handover",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(database),
            checkpoint_interval=0.05,
        )
        .source(make_source(kafka, topic, group))
        .map("decode", json_value)
        .sink(sink)
    )

    async def committed() -> bool:
        return until == sum((await kafka.committed(topic, group, partitions=2)).values())

    with anyio.fail_after(DEADLINE):
        async with pipeline.open() as running:
            for _ in range(1_000):
                if await committed():
                    break
                await anyio.sleep(0.05)
            running.stop()
    return sorted(value["key"] for value in sink.values)


async def test_a_member_restarting_after_another_moved_on_resumes_where_the_group_is(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """A -> B -> A with one SQLite store each: A's second run reads only what is new."""
    topic = await kafka.create_topic(2)
    group = f"g-{uuid.uuid4().hex}"
    runs: list[list[str]] = []
    for prefix, member, until in (("a", "a", 1_000), ("b", "b", 2_000), ("c", "a", 3_000)):
        await kafka.produce(topic, orders(prefix, 1_000))
        runs.append(await run_member(kafka, topic, group, tmp_path / f"{member}.db", until))
    expected = [sorted(f"{prefix}{i}" for i in range(1_000)) for prefix in "abc"]
    assert expected == runs


async def test_a_fenced_member_commits_nothing(kafka: KafkaHelper) -> None:
    """Once the member's generation is reset (its session expired), commits are dropped."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, orders("k", 20))
    group = f"g-{uuid.uuid4().hex}"
    counted: dict[str, int] = {}

    def count(outcome: str, n: int) -> None:
        counted[outcome] = counted.get(outcome, 0) + n

    source = make_source(kafka, topic, group)
    await source.open(SourceContext(pipeline="p", positions={}, count=count))
    try:
        with anyio.fail_after(DEADLINE):
            batch: SourceBatch | None = await source.read(20)
        assert batch is not None
        await source.commit({f"{topic}:0": 5})
        # What aiokafka does when a heartbeat learns that the member was evicted.
        source._consumer._coordinator.generation = -1
        with pytest.raises(CommitFailedError):
            await source.commit({f"{topic}:0": 20})
        await source.committed({f"{topic}:0": 20})
    finally:
        await source.aclose()
    expected = ({f"{topic}:0": 5}, {"commits_refused": 2})
    assert expected == (await kafka.committed(topic, group, partitions=1), counted)


async def test_a_commit_never_moves_the_group_offset_backwards(kafka: KafkaHelper) -> None:
    """Positions below what the group already has (a stale checkpoint) are not committed."""
    topic = await kafka.create_topic(1)
    await kafka.produce(topic, orders("k", 20))
    group = f"g-{uuid.uuid4().hex}"
    source = make_source(kafka, topic, group)
    await source.open(SourceContext(pipeline="p", positions={}))
    try:
        await wait_until(lambda: bool(source._consumer.assignment()), timeout=DEADLINE)
        with anyio.fail_after(DEADLINE):
            assert await source.read(20) is not None
        await source.commit({f"{topic}:0": 15})
        await source.commit({f"{topic}:0": 7})
    finally:
        await source.aclose()
    assert {f"{topic}:0": 15} == await kafka.committed(topic, group, partitions=1)
