"""A graceful stop whose drain times out is still a stop, and the records left are counted."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

import riprap
import riprap.checkpoints
from riprap.connectors.kafka import KafkaCheckpoints, KafkaSource, json_value
from riprap.connectors.memory import MemorySink
from riprap.testing import wait_until

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from .conftest import KafkaHelper

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

DEADLINE = 30.0


class StuckSink:
    """Writes the first ``limit`` records, then never returns from ``write`` again."""

    name = "stuck"
    idempotent = False

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.values: list[Any] = []
        self._never = anyio.Event()

    async def open(self) -> None: ...

    async def write(self, batch: riprap.Batch) -> None:
        if len(self.values) + len(batch.items) > self.limit:
            await self._never.wait()
        self.values.extend(batch.items)

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


def build(kafka: KafkaHelper, topic: str, group: str, sink: Any) -> riprap.Pipeline:
    """Kafka -> decode -> ``sink``, the positions kept as the group's offsets."""
    source = KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
    )
    return (
        riprap.Pipeline(
            "drain",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.05,
            batch_size=10,
            max_in_flight=60,
            drain_timeout=0.2,
        )
        .source(source)
        .map("decode", json_value)
        .sink(sink)
    )


async def test_a_drain_that_times_out_is_stopped_and_leaves_its_records_to_the_next_run(
    kafka: KafkaHelper,
) -> None:
    """One stop, a drain past drain_timeout: stopped, records left counted and read again."""
    topic = await kafka.create_topic(1)
    await kafka.produce(
        topic, [(f"k{i}".encode(), orjson.dumps({"id": i}), []) for i in range(100)]
    )
    group = f"g-{uuid.uuid4().hex}"
    stuck = StuckSink(limit=40)
    with anyio.fail_after(DEADLINE):
        async with build(kafka, topic, group, stuck).open() as running:
            # Saturated: 40 records written, the other 60 in flight behind the stuck write.
            await wait_until(
                lambda: (40, 60) == (len(stuck.values), running.statistics().in_flight),
                timeout=DEADLINE,
            )
            running.stop()
            report = await running.wait()
    expected = ("stopped", {"drain_abandoned": 60}, {f"{topic}:0": 40})
    assert expected == (report.outcome, dict(report.source_outcomes), dict(report.positions))
    sink = MemorySink()
    with anyio.fail_after(DEADLINE):
        async with build(kafka, topic, group, sink).open() as running:
            await wait_until(lambda: len(sink.values) >= 60, timeout=DEADLINE)
            running.stop()
    assert list(range(40, 100)) == sorted(value["id"] for value in sink.values)
