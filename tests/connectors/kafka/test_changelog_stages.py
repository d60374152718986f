"""Stages on keyed state (the built-in Dedupe on a store, a custom stage) in a Kafka changelog."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import orjson
import pytest

pytest.importorskip("aiokafka")

import riprap
from riprap.connectors.kafka import KafkaChangelog, KafkaCheckpoints, KafkaSource, json_value
from riprap.connectors.memory import MemorySink
from riprap.stages.dedupe import Dedupe
from riprap.state import KeyedState, MemoryStore

from .conftest import FAST_GROUP
from .test_changelog import run_until

if TYPE_CHECKING:
    from riprap.lowlevel import Emit

    from .conftest import KafkaHelper

pytestmark = [pytest.mark.kafka]


class RunningCount:
    """A custom stage whose whole state is keyed: it says so with ``keyed_state``."""

    step_id = "count"

    def __init__(self) -> None:
        self.keyed_state = KeyedState(MemoryStore())

    async def open(self, context: riprap.StageContext) -> None:
        self.keyed_state.open(context, self.step_id)

    async def process(self, batch: riprap.Batch, emit: Emit) -> None:
        out = []
        for index, value in enumerate(batch.items):
            state = self.keyed_state.state(batch, index)
            seen: int = state.get(0) + 1
            state.set(seen)
            out.append({**value, "seen": seen})
        await emit(riprap.Batch(out, batch.ack, batch.origin))

    async def finish(self, emit: Emit) -> None:
        """Nothing is held back."""

    def snapshot(self) -> Any:
        return self.keyed_state.snapshot()

    def restore(self, state: Any) -> None:
        self.keyed_state.restore(state)


def build(kafka: KafkaHelper, topic: str, group: str, sink: MemorySink) -> riprap.Pipeline:
    source = KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
    )
    return (
        riprap.Pipeline(
            "orders",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.1,
            changelog=KafkaChangelog(kafka.bootstrap, topic=f"{topic}-changelog"),
        )
        .source(source)
        .map("decode", json_value)
        .stage(Dedupe("once", key="id", ttl=3600, store=MemoryStore()))
        .stage(RunningCount())
        .sink(sink)
    )


def deliveries(ids: range) -> list[tuple[bytes | None, bytes, list[Any]]]:
    """Each id delivered twice, keyed by its customer (so both copies share a partition)."""
    return [(f"c{i % 5}".encode(), orjson.dumps({"id": i}), []) for i in ids for _ in range(2)]


@pytest.mark.anyio
async def test_a_dedupe_and_a_custom_stage_go_on_from_the_changelog(kafka: KafkaHelper) -> None:
    """KafkaCheckpoints accepts both stages; the next run, with fresh in-memory stores, drops
    the repeats of ids the first run let through and counts on from where it stopped."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(topic, deliveries(range(100)))
    first = MemorySink()
    await run_until(build(kafka, topic, group, first), first, 100)
    await kafka.produce(topic, deliveries(range(50, 150)))  # 50..99 again, then 50 new ids
    second = MemorySink()
    await run_until(build(kafka, topic, group, second), second, 50)
    ids = [value["id"] for value in first.values + second.values]
    assert list(range(150)) == sorted(ids)
    last = {}
    for value in first.values + second.values:
        last[value["id"] % 5] = value["seen"]
    assert dict.fromkeys(range(5), 30) == last
