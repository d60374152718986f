"""Kafka clients stop within a bound, and a cancellation of aiokafka's own never leaks out."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest

pytest.importorskip("aiokafka")

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from riprap.connectors.kafka import KafkaSource
from riprap.testing import kafka_broker

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]


async def test_a_consumer_whose_broker_died_stops_without_leaking_a_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker dies while the source's consumer fetches: closing the source returns (no
    CancelledError reaches the caller, which is not being cancelled) and says what happened."""
    broker = kafka_broker()
    bootstrap = broker.__enter__()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("t", 1, 1)])
        await admin.close()
        consumer = AIOKafkaConsumer("t", bootstrap_servers=bootstrap, group_id="g")
        await consumer.start()
        await consumer.getmany(timeout_ms=200)  # a fetch in flight from now on
    finally:
        broker.__exit__(None, None, None)
    source = KafkaSource("t", bootstrap_servers=bootstrap, group_id="g")
    source._consumer = consumer  # the source's own client, as open() leaves it
    caplog.set_level(logging.WARNING, logger="riprap.connectors.kafka")
    with anyio.fail_after(60):
        await source.aclose()
    task = asyncio.current_task()
    assert task is not None
    assert 0 == task.cancelling()
    assert any("source 'kafka'" in r.getMessage() for r in caplog.records), caplog.text
