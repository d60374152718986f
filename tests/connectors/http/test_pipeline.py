"""HTTP connectors inside whole pipelines: an outage behind a breaker, data errors, end to end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import orjson
import pytest
from aiohttp import web

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.http import HttpEnricher, HttpSink, WebhookSource
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.policies import BreakerConfig, Bulkhead, CircuitBreaker, CircuitStateChanged, Retry
from riprap.testing import VirtualClock

from ._servers import serve

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.network]


def merge_score(value: int, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": value, **data}


async def test_outage_of_20_seconds_trips_the_breaker_pipeline_waits_then_enriches_all(
    tmp_path: Path,
) -> None:
    """A dependency answering 503 for 20 virtual seconds trips the breaker; nothing is lost."""
    clock = VirtualClock()
    hits: list[tuple[float, int]] = []

    async def scores(request: web.Request) -> web.Response:
        # The server runs in the test's event loop and reads the pipeline's clock.
        now = clock.monotonic()
        if now < 20.0:
            hits.append((now, 503))
            return web.Response(status=503, headers={"Retry-After": "1"})
        hits.append((now, 200))
        return web.json_response({"score": int(request.path.rsplit("/", 1)[1]) * 2})

    breaker = CircuitBreaker(
        "scores",
        BreakerConfig(window_size=20, minimum_calls=10, open_duration=5.0, half_open_probes=2),
        clock=clock,
    )
    opened: list[float] = []

    def watch(event: object) -> None:
        if isinstance(event, CircuitStateChanged) and event.new == "open":
            opened.append(clock.monotonic())

    dlq = tmp_path / "dlq.jsonl"
    sink = MemorySink()
    async with serve(scores) as base:
        enrich = HttpEnricher(lambda v: f"{base}/score/{v}", merge=merge_score, timeout=5.0)
        pipeline = (
            riprap.Pipeline(
                "outage",
                checkpoint=riprap.checkpoints.MemoryCheckpoints(),
                clock=clock,
                batch_size=20,
                max_in_flight=100,
                dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
                policy_hooks=(watch,),
            )
            .source(IterableSource("ids", list(range(200))))
            .map(
                "enrich",
                enrich,
                concurrency=8,
                retry=Retry(attempts=None, timeout=600.0, wait_initial=0.1, wait_max=2.0),
                breaker=breaker,
                on_open="wait",
                bulkhead=Bulkhead(8),
            )
            .sink(sink)
        )
        async with enrich, clock.autojump():
            report = await pipeline.run()
    assert [{"id": i, "score": i * 2} for i in range(200)] == sink.values
    assert {} == report.dead_lettered
    assert not dlq.exists() or [] == list(riprap.deadletters.read_dead_letters(dlq))
    assert report.breaker_trips >= 1
    assert opened[0] < 20.0
    assert clock.monotonic() >= 20.0
    failed = [status for _, status in hits if status == 503]
    # The open breaker held calls back: far fewer failed calls than records waiting.
    assert 0 < len(failed) < 200
    assert 200 == sum(1 for _, status in hits if status == 200)


async def test_rejected_records_are_dead_lettered_with_the_http_reason(tmp_path: Path) -> None:
    """Records the service answers 404 for go to the DLQ as http_404; the others are enriched."""
    clock = VirtualClock()

    async def scores(request: web.Request) -> web.Response:
        ident = int(request.path.rsplit("/", 1)[1])
        if ident % 5 == 0:
            return web.Response(status=404)
        return web.json_response({"score": ident * 2})

    dlq = tmp_path / "dlq.jsonl"
    sink = MemorySink()
    async with serve(scores) as base:
        enrich = HttpEnricher(lambda v: f"{base}/score/{v}", merge=merge_score)
        pipeline = (
            riprap.Pipeline(
                "rejects",
                checkpoint=riprap.checkpoints.MemoryCheckpoints(),
                clock=clock,
                dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
            )
            .source(IterableSource("ids", list(range(1, 21))))
            .map("enrich", enrich, concurrency=4, retry=Retry(attempts=3, wait_initial=0.1))
            .sink(sink)
        )
        async with enrich, clock.autojump():
            report = await pipeline.run()
    letters = list(riprap.deadletters.read_dead_letters(dlq))
    assert [5, 10, 15, 20] == [letter.original_value() for letter in letters]
    assert {"http_404": 4} == report.dead_lettered
    assert 0 == report.retries
    assert [{"id": i, "score": i * 2} for i in range(1, 21) if i % 5] == sink.values


async def test_webhook_to_enricher_to_http_sink_delivers_each_record_once() -> None:
    """Records POSTed to the webhook are enriched and POSTed on, each once, before the 200s."""
    applied: dict[str, Any] = {}

    async def downstream(request: web.Request) -> web.Response:
        if request.path.startswith("/score/"):
            return web.json_response({"score": int(request.path.rsplit("/", 1)[1]) * 2})
        applied.setdefault(request.headers["Idempotency-Key"], orjson.loads(await request.read()))
        return web.Response(status=201)

    source = WebhookSource()
    async with serve(downstream) as base:
        enrich = HttpEnricher(lambda r: f"{base}/score/{r['id']}", merge=lambda r, d: {**r, **d})
        pipeline = (
            riprap.Pipeline(
                "relay", checkpoint=riprap.checkpoints.MemoryCheckpoints(), checkpoint_interval=0.02
            )
            .source(source)
            .map("enrich", enrich, concurrency=8)
            .sink(HttpSink(f"{base}/events", pipeline="relay", idempotent=True, concurrency=4))
        )
        statuses: list[int] = []
        async with enrich, pipeline.open(), aiohttp.ClientSession() as client:

            async def send(batch: int) -> None:
                records = [{"id": batch * 10 + i} for i in range(10)]
                async with client.post(source.url, json=records) as response:
                    statuses.append(response.status)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for batch in range(5):
                        tg.start_soon(send, batch)
    assert [200] * 5 == statuses
    assert [{"id": i, "score": i * 2} for i in range(50)] == sorted(
        applied.values(), key=lambda r: r["id"]
    )
    assert {f"relay:webhook:{i}" for i in range(50)} == set(applied)
