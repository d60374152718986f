"""Records of a partition given up while they were in flight: the keyed step leaves them to
the partition's new owner instead of failing the run or working on state it no longer has."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

import riprap
from riprap.connectors.kafka import KafkaChangelog, KafkaCheckpoints, KafkaSource, json_value
from riprap.connectors.sqlite import SqliteSink, read_table

from .conftest import FAST_GROUP

if TYPE_CHECKING:
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
