"""HttpSink against real aiohttp servers: idempotency keys, batching, retries, rejections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiohttp import web

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.lowlevel
from riprap.connectors.http import HttpDataError, HttpSink, HttpTransientError
from riprap.connectors.memory import IterableSource
from riprap.policies import Retry
from riprap.testing import VirtualClock

from ._servers import closed_port_url, serve

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.network]


class Receiver:
    """A server that records every request's key and body, and applies each key once."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock
        self.requests: list[tuple[str, Any]] = []
        self.times: list[float] = []
        self.applied: dict[str, Any] = {}
        self.answers: dict[str, list[tuple[int, dict[str, str]]]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        body = orjson.loads(await request.read())
        self.requests.append((key, body))
        if self.clock is not None:
            self.times.append(self.clock.monotonic())
        planned = self.answers.get(key)
        status, headers = planned.pop(0) if planned else (200, {})
        if status < 300 or status == 500:  # a 500 here stands for a lost response
            self.applied.setdefault(key, body)
        return web.Response(status=status, headers=headers)


def pipeline(sink: HttpSink, values: list[Any], **options: Any) -> riprap.Pipeline:
    """``values`` from a memory source straight into ``sink``."""
    return (
        riprap.Pipeline("orders", checkpoint=riprap.checkpoints.MemoryCheckpoints(), **options)
        .source(IterableSource("ids", values))
        .sink(sink, retry=Retry(attempts=4, wait_initial=0.1, wait_max=10.0))
    )


async def test_one_post_per_record_with_a_position_key() -> None:
    """Without batch_size, each record is one JSON POST keyed pipeline:partition:offset."""
    receiver = Receiver()
    async with serve(receiver.handle) as base:
        sink = HttpSink(f"{base}/orders", pipeline="orders")
        report = await pipeline(sink, [{"id": i} for i in range(4)]).run()
    expected = [(f"orders:memory:{i}", {"id": i}) for i in range(4)]
    assert expected == receiver.requests
    assert 4 == report.records_out


async def test_batched_posts_carry_arrays_and_first_last_keys() -> None:
    """With batch_size=2, records go as JSON arrays keyed by their first and last positions."""
    receiver = Receiver()
    async with serve(receiver.handle) as base:
        sink = HttpSink(f"{base}/orders", pipeline="orders", batch_size=2)
        await pipeline(sink, list(range(5))).run()
    expected = [
        ("orders:memory:0-1", [0, 1]),
        ("orders:memory:2-3", [2, 3]),
        ("orders:memory:4", [4]),
    ]
    assert expected == receiver.requests


async def test_retries_repeat_the_same_key_and_honour_retry_after() -> None:
    """A 503/429 (and a lost 500 response) is retried with the same key, after Retry-After."""
    clock = VirtualClock()
    receiver = Receiver(clock)
    receiver.answers = {
        "orders:memory:1": [(503, {"Retry-After": "4"})],
        "orders:memory:2": [(429, {"Retry-After": "4"}), (500, {})],
    }
    async with serve(receiver.handle) as base:
        sink = HttpSink(f"{base}/orders", pipeline="orders", idempotent=True)
        async with clock.autojump():
            report = await pipeline(sink, ["a", "b", "c"], clock=clock).run()
    keys = [key for key, _ in receiver.requests]
    assert [
        "orders:memory:0",
        "orders:memory:1",  # 503: the whole write is retried with the same keys
        "orders:memory:0",
        "orders:memory:1",
        "orders:memory:2",  # 429
        "orders:memory:0",
        "orders:memory:1",
        "orders:memory:2",  # 500, response lost
        "orders:memory:0",
        "orders:memory:1",
        "orders:memory:2",
    ] == keys
    assert {"orders:memory:0": "a", "orders:memory:1": "b", "orders:memory:2": "c"} == (
        receiver.applied
    )
    assert 3 == report.retries
    assert receiver.times[2] - receiver.times[1] >= 4.0
    assert receiver.times[5] - receiver.times[4] >= 4.0


async def test_rejected_records_are_dead_lettered_one_by_one(tmp_path: Path) -> None:
    """A 422 for one record dead-letters just that record (http_422); the rest are written."""
    receiver = Receiver()
    receiver.answers = {"orders:memory:2": [(422, {})] * 3}
    dlq = tmp_path / "dlq.jsonl"
    async with serve(receiver.handle) as base:
        sink = HttpSink(f"{base}/orders", pipeline="orders", concurrency=4)
        report = await pipeline(
            sink, [10, 11, 12, 13], dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq)
        ).run()
    letters = list(riprap.deadletters.read_dead_letters(dlq))
    assert [(12, "http_422", 2)] == [(x.original_value(), x.reason, x.offset) for x in letters]
    assert {"http_422": 1} == report.dead_lettered
    assert {f"orders:memory:{i}" for i in (0, 1, 3)} == set(receiver.applied)


async def test_a_sink_that_is_down_raises_a_transient_error() -> None:
    """A refused connection during a write raises HttpTransientError (the engine retries it)."""
    sink = HttpSink(closed_port_url())
    await sink.open()
    try:
        batch = riprap.Batch([1], riprap.lowlevel.Ack(lambda: None), None)
        with pytest.raises(HttpTransientError) as caught:
            await sink.write(batch)
    finally:
        await sink.aclose()
    assert caught.value.status is None


async def test_records_without_a_position_are_keyed_by_content() -> None:
    """A batch without source positions gets a content hash as its idempotency key."""
    receiver = Receiver()
    async with serve(receiver.handle) as base:
        sink = HttpSink(f"{base}/x", pipeline="p")
        await sink.open()
        try:
            await sink.write(riprap.Batch([{"a": 1}], riprap.lowlevel.Ack(lambda: None), None))
            await sink.write(riprap.Batch([{"a": 1}], riprap.lowlevel.Ack(lambda: None), None))
        finally:
            await sink.aclose()
    (first, _), (second, _) = receiver.requests
    assert (True, first) == (first.startswith("p:sha256:"), second)


async def test_a_4xx_is_a_data_error_and_writing_unopened_fails() -> None:
    """A 400 raises HttpDataError (reason http_400); a write before open is a RuntimeError."""

    async def bad(request: web.Request) -> web.Response:
        return web.Response(status=400)

    async with serve(bad) as base:
        sink = HttpSink(base, name="s")
        with pytest.raises(RuntimeError):
            await sink.write(riprap.Batch([1], riprap.lowlevel.Ack(lambda: None), None))
        await sink.open()
        try:
            with pytest.raises(HttpDataError) as caught:
                await sink.write(riprap.Batch([1], riprap.lowlevel.Ack(lambda: None), None))
        finally:
            await sink.aclose()
    assert ("http_400", False) == (caught.value.reason, sink.idempotent)


async def test_invalid_options_are_config_errors() -> None:
    """A zero batch_size or concurrency, or a negative timeout, is a ConfigError naming it."""
    names = []
    for kwargs in ({"batch_size": 0}, {"concurrency": 0}, {"timeout": -1}):
        with pytest.raises(riprap.ConfigError) as caught:
            HttpSink("http://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]
        names.append(caught.value.option)
    assert ["HttpSink.batch_size", "HttpSink.concurrency", "HttpSink.timeout"] == names
