"""Records of a partition given up while they were in flight: the keyed step leaves them to
the partition's new owner instead of failing the run or working on state it no longer has."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

from aiokafka import AIOKafkaConsumer

import riprap
from riprap.connectors.kafka import KafkaChangelog, KafkaCheckpoints, KafkaSource, json_value
from riprap.connectors.sqlite import SqliteSink, read_table

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from riprap.state import State

    from .conftest import KafkaHelper

pytestmark = [pytest.mark.kafka]

RECORDS = 600
KEYS = 12


async def slow(value: Any) -> Any:
    """Work that outlasts the source's drain on a revoke: records stay in flight."""
    await anyio.sleep(0.005)
    return value


def count(record: dict[str, Any], state: State) -> dict[str, Any]:
    seen: int = state.get(0) + 1
    state.set(seen)
    return {"id": record["id"], "seen": seen}


def member(
    kafka: KafkaHelper, topic: str, group: str, database: Path
) -> tuple[riprap.Pipeline, KafkaSource]:
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        consumer_options=FAST_GROUP,
        drain_timeout=0.01,
    )
    pipeline = (
        riprap.Pipeline(
            "counts",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.05,
            batch_size=50,
            changelog=KafkaChangelog(kafka.bootstrap, topic=f"{topic}-changelog"),
        )
        .source(source)
        .map("decode", json_value)
        .map("slow", slow, concurrency=1)
        .map("count", count, state=True)
        .sink(SqliteSink(database, table="counts", key="id", timeout=30.0))
    )
    return pipeline, source


@pytest.mark.anyio
async def test_records_in_flight_when_their_partition_moves_are_left_to_its_new_owner(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """A second member joins while the first has records of every partition in a slow step:
    the run goes on, and every record's running count is exact."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(
        topic,
        [(f"k{i % KEYS}".encode(), orjson.dumps({"id": i}), []) for i in range(RECORDS)],
    )
    database = tmp_path / "out.db"
    one, _ = member(kafka, topic, group, database)
    two, two_source = member(kafka, topic, group, database)

    async def rows() -> int:
        return len(await read_table(database, "counts")) if database.exists() else 0

    async with one.open() as first:
        for _ in range(3_000):  # some rows written, most records still to come (60 s at most)
            if await rows() >= 50:
                break
            await anyio.sleep(0.02)
        async with two.open() as second:
            for _ in range(3_000):
                if await rows() >= RECORDS:
                    break
                await anyio.sleep(0.02)
            handed_over = first.statistics().source.outcomes.get("handed_over", 0)
            assert two_source.lag() is not None
            second.stop()
        first.stop()
    expected = {i: i // KEYS + 1 for i in range(RECORDS)}
    table = await read_table(database, "counts")
    found = {int(i): value["seen"] for i, value in table.items()}
    assert expected == found
    assert handed_over > 0, "no record was in flight when its partition moved"


@pytest.mark.anyio
async def test_without_a_changelog_a_partition_assigned_back_resumes_from_its_checkpoint(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """One process keeps keyed state in SQLite checkpoints (no changelog); another consumer
    of the group comes and goes (a rolling deploy) while records are in a slow step. The
    partitions come back to the process, which drops the changes its checkpoint does not
    cover and counts every record exactly once."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(
        topic, [(f"k{i % KEYS}".encode(), orjson.dumps({"id": i}), []) for i in range(RECORDS)]
    )
    database = tmp_path / "out.db"
    source = KafkaSource(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        consumer_options=FAST_GROUP,
        drain_timeout=0.01,
    )
    alone = (
        riprap.Pipeline(
            "counts", checkpoint_path=tmp_path / "checkpoints.db", checkpoint_interval=0.05
        )
        .source(source)
        .map("decode", json_value)
        .map("slow", slow, concurrency=1)
        .map("count", count, state=True)
        .map("slow_after", slow, concurrency=1)  # counted, not yet written: not checkpointed
        .sink(SqliteSink(database, table="counts", key="id", timeout=30.0))
    )

    async def rows() -> int:
        return len(await read_table(database, "counts")) if database.exists() else 0

    async def until(done: Callable[[], Awaitable[bool]]) -> None:
        for _ in range(3_000):  # 60 s at most
            if await done():
                return
            await anyio.sleep(0.02)
        pytest.fail("timed out")

    async def some_rows() -> bool:
        return await rows() >= 50

    async def shared() -> bool:
        return 0 < len(source.lag()) < 3

    async def all_back() -> bool:
        return len(source.lag()) == 3

    async def all_rows() -> bool:
        return await rows() >= RECORDS

    async with alone.open() as running:
        await until(some_rows)
        visitor = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka.bootstrap, group_id=group, **FAST_GROUP
        )
        await visitor.start()  # joins the group (it reads nothing)
        try:
            await until(shared)
        finally:
            await visitor.stop()
        await until(all_back)
        await until(all_rows)
        outcomes = running.statistics().source.outcomes
        running.stop()
    table = await read_table(database, "counts")
    assert {i: i // KEYS + 1 for i in range(RECORDS)} == {
        int(i): value["seen"] for i, value in table.items()
    }
    assert outcomes.get("handed_over", 0) > 0, "no record was in flight when the partitions moved"
