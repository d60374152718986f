"""A graceful stop against step calls that swallow every cancellation: bounded, quiet, reported."""

from __future__ import annotations

import logging
import time

import anyio
import pytest
from prometheus_client import generate_latest

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.testing import wait_until

pytestmark = pytest.mark.anyio

DRAIN = 0.3
"""The pipeline's drain_timeout, in real seconds."""


class Hostile:
    """A step function that swallows every cancellation until the test releases it."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0
        self.released = anyio.Event()

    async def __call__(self, value: int) -> int:
        self.started += 1
        try:
            while True:
                try:
                    await self.released.wait()
                    return value
                except anyio.get_cancelled_exc_class():
                    continue
        finally:
            self.ended += 1


async def test_a_graceful_stop_is_bounded_by_drain_timeout_and_reports_what_it_abandoned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three calls ignore the stop: the run still ends at drain_timeout, idle, and reports them."""
    hostile = Hostile()
    pipeline = (
        riprap.Pipeline(
            "stubborn", checkpoint=riprap.checkpoints.MemoryCheckpoints(), drain_timeout=DRAIN
        )
        .source(IterableSource("ids", [1, 2, 3]))
        .map("hostile", hostile, concurrency=3, attempt_timeout=30.0, attempt_grace=1.0)
        .sink(MemorySink())
    )
    with caplog.at_level(logging.WARNING, logger="riprap.policies"), anyio.fail_after(10):
        async with pipeline.open() as running:
            await wait_until(lambda: 3 == hostile.started)
            wall, cpu = time.monotonic(), time.process_time()
            running.stop()
            report = await running.wait()
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            metrics = generate_latest(running.metrics_registry).decode()
        hostile.released.set()
        await wait_until(lambda: 3 == hostile.ended)
    assert DRAIN <= wall < DRAIN + 1.0
    assert cpu < wall / 2  # waited, did not spin
    assert 3 == report.abandoned_calls
    assert "abandoned calls" in report.format()
    assert 'riprap_abandoned_calls_total{pipeline="stubborn",stage="hostile"} 3.0' in metrics
    logged = [r for r in caplog.records if "riprap.policies" == r.name]
    assert ["hostile"] * 3 == [getattr(r, "stage", None) for r in logged]
