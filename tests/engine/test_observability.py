"""Metrics, health endpoints and structured logs of a real run."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.observability
import riprap.testing
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.observability._health import StallDetector
from riprap.policies import CircuitBreaker, Retry

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parsed exposition text as {(sample name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def get(url: str) -> tuple[int, bytes]:
    """GET a URL on the local health server."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def test_scraped_metrics_match_what_happened(tmp_path: Path) -> None:
    """/metrics, parsed with prometheus-client, shows the run's records, DLQ, retries, trips."""
    calls: dict[int, int] = {}
    breaker = CircuitBreaker("scores")

    def parse(raw: bytes) -> dict[str, Any]:
        if raw.startswith(b"!"):
            raise riprap.DataError("not an order", reason="validation")
        order: dict[str, Any] = orjson.loads(raw)
        return order

    async def score(order: dict[str, Any]) -> dict[str, Any]:
        calls[order["id"]] = calls.get(order["id"], 0) + 1
        if order["id"] % 10 == 0 and calls[order["id"]] == 1:
            raise riprap.TransientError("blip")
        if order["id"] == 50:
            breaker.force_open()
            breaker.reset()
        return order

    values = [b"!bad" if i % 20 == 7 else orjson.dumps({"id": i}) for i in range(100)]
    p = (
        riprap.Pipeline(
            "scraped",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            batch_size=25,
        )
        .source(IterableSource("orders", values))
        .map("parse", parse)
        .filter("even", lambda order: order["id"] % 2 == 0)
        .map("score", score, retry=Retry(attempts=3, wait_initial=0.001), breaker=breaker)
        .sink(MemorySink())
    )
    async with p.open() as running, riprap.observability.serve_health(running) as server:
        report = await running.wait()
        status, body = await get(f"http://127.0.0.1:{server.port}/metrics")
    assert 200 == status
    found = samples(body.decode())
    pipe = ("pipeline", "scraped")

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted([pipe, *labels.items()])))]

    assert 100 == value("riprap_records_total", stage="orders", outcome="in")
    assert 100 == value("riprap_source_records_total", source="orders")
    # parse and even run fused in one loop; their series are still their own.
    assert 100 == value("riprap_records_total", stage="parse", outcome="in")
    assert 5 == value("riprap_records_total", stage="parse", outcome="error")
    assert 95 == value("riprap_records_total", stage="parse", outcome="out")
    assert 95 == value("riprap_records_total", stage="even", outcome="in")
    assert 45 == value("riprap_records_total", stage="even", outcome="dropped")
    assert 50 == value("riprap_records_total", stage="even", outcome="out")
    assert 50 == value("riprap_records_total", stage="score", outcome="in")
    batches = value("riprap_step_latency_seconds_count", stage="even")
    assert 4 == batches == value("riprap_step_latency_seconds_bucket", stage="parse", le="+Inf")
    assert 4 == value("riprap_end_to_end_latency_seconds_count")
    assert report.records_out + 50 == value("riprap_records_done_total")
    assert report.records_out == value("riprap_records_total", stage="memory", outcome="out")
    assert 5 == value("riprap_dead_letters_total", reason="validation")
    assert report.retries == value("riprap_retries_total", stage="score")
    assert 1 == value("riprap_breaker_trips_total", dependency="scores")
    assert 0 == value("riprap_breaker_state", dependency="scores")
    assert 100 == value("riprap_position", partition="memory")
    assert report.checkpoints == value("riprap_checkpoints_total", outcome="saved")


class ManualClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep_forever()


async def test_readyz_turns_red_on_a_stall_and_healthz_stays_green() -> None:
    """Records in flight with none finishing for stall_after seconds make /readyz answer 503."""
    clock = ManualClock()
    never = anyio.Event()

    async def stuck(value: int) -> int:
        await never.wait()
        return value

    p = (
        riprap.Pipeline("stuck", checkpoint=riprap.checkpoints.MemoryCheckpoints(), clock=clock)
        .source(IterableSource("nums", list(range(10))))
        .map("stuck", stuck)
        .sink(MemorySink())
        .with_options(drain_timeout=0)
    )
    config = riprap.observability.HealthConfig(stall_after=30.0)
    async with p.open() as running, riprap.observability.serve_health(running, config) as server:
        base = f"http://127.0.0.1:{server.port}"
        await anyio.wait_all_tasks_blocked()
        assert 200 == (await get(f"{base}/readyz"))[0]
        clock.now += 31.0
        status, body = await get(f"{base}/readyz")
        assert 503 == status
        assert ["stalled: 10 records in flight, none done for 31s"] == orjson.loads(body)[
            "problems"
        ]
        assert 200 == (await get(f"{base}/healthz"))[0]
        running.abort()


def test_stall_detector_resets_when_records_finish() -> None:
    """Progress or an empty pipeline is never a stall."""
    detector = StallDetector(10.0)
    assert detector.stalled(finished=5, in_flight=3, now=0.0) is None
    assert 11.0 == detector.stalled(finished=5, in_flight=3, now=11.0)
    assert detector.stalled(finished=6, in_flight=3, now=12.0) is None
    assert detector.stalled(finished=6, in_flight=0, now=50.0) is None


async def test_json_logs_are_valid_and_redacted(tmp_path: Path) -> None:
    """Log lines are JSON; an email in an error message is redacted; values never appear."""

    class FlakyBackend:
        """Memory checkpoints whose first periodic save fails with a chatty message."""

        def __init__(self) -> None:
            self.inner = riprap.checkpoints.MemoryCheckpoints()
            self.failed = False

        async def claim(self, pipeline: str, owner: str) -> riprap.checkpoints.Claim:
            return await self.inner.claim(pipeline, owner)

        async def save(self, checkpoint: riprap.checkpoints.Checkpoint) -> None:
            if not self.failed:
                self.failed = True
                raise PermissionError("store refused write for ops-lead@example.com")
            await self.inner.save(checkpoint)

        async def load(self, pipeline: str) -> riprap.checkpoints.Checkpoint | None:
            return await self.inner.load(pipeline)

        async def aclose(self) -> None: ...

    stream = io.StringIO()
    logged = anyio.Event()

    class Handler(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            super().emit(record)
            logged.set()

    handler = Handler(stream)
    handler.setFormatter(riprap.observability.JsonFormatter())
    logger = logging.getLogger("riprap")
    logger.addHandler(handler)
    secret_value = "card 4111 1111 1111 1111 for jane@example.org"
    try:
        gate = anyio.Event()

        async def hold(value: str) -> str:
            await gate.wait()
            return value

        p = (
            riprap.Pipeline("logged", checkpoint=FlakyBackend(), checkpoint_interval=0.001)
            .source(IterableSource("secrets", [secret_value] * 3))
            .map("hold", hold)
            .sink(MemorySink())
        )
        async with p.open() as running:
            with anyio.fail_after(10):
                await logged.wait()
            gate.set()
            await running.wait()
    finally:
        logger.removeHandler(handler)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert lines
    assert any("[REDACTED:email]" in line["message"] for line in lines)
    text = stream.getvalue()
    assert "ops-lead@example.com" not in text
    assert "jane@example.org" not in text
    assert "4111" not in text


async def test_alert_fires_once_and_resolves_at_a_real_webhook() -> None:
    """A sustained error rate fires one alert and its end one resolve, POSTed to a webhook."""
    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    clock = riprap.testing.VirtualClock()

    async def slow_check(n: int) -> int:
        await clock.sleep(0.1)
        if n < 300 and n % 2:
            raise riprap.DataError("bad reading")
        return n

    rule = riprap.observability.AlertRule(
        name="errors", signal="error_rate", threshold=0.2, window=10.0, for_seconds=5.0
    )

    class MemoryDeadLetters:
        """Keeps letters in memory: no worker threads, so virtual time stays exact."""

        name = "memory-dlq"

        def __init__(self) -> None:
            self.letters: list[riprap.deadletters.DeadLetter] = []

        async def open(self) -> None: ...

        async def write(self, letters: Any) -> None:
            self.letters.extend(letters)

        async def aclose(self) -> None: ...

    p = riprap.Pipeline(
        "alerting",
        checkpoint=riprap.checkpoints.MemoryCheckpoints(),
        clock=clock,
        dead_letter=MemoryDeadLetters(),
        batch_size=10,
        alerts=(rule,),
        alert_sinks=(riprap.observability.WebhookAlerts(f"http://127.0.0.1:{port}/alerts"),),
        alert_interval=1.0,
    )
    p = (
        p.source(IterableSource("readings", list(range(900))))
        .map("check", slow_check)
        .sink(MemorySink())
    )
    try:
        async with clock.autojump():
            report = await p.run()
    finally:
        await runner.cleanup()
    assert {"data_error": 150} == report.dead_lettered
    assert ["firing", "resolved"] == [alert["status"] for alert in received]
    assert {"errors"} == {alert["rule"] for alert in received}
    assert received[0]["value"] > 0.2


async def test_fused_steps_report_their_own_counts(tmp_path: Path) -> None:
    """Steps fused into one loop, two flat_maps among them, each count by their own step id."""

    def check(n: int) -> int:
        if n == 4:
            raise riprap.DataError("four", reason="validation")
        return n

    p = (
        riprap.Pipeline(
            "fused",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            batch_size=30,
        )
        .source(IterableSource("nums", list(range(100))))
        .flat_map("split", lambda n: [n, n])
        .filter("even", lambda n: n % 2 == 0)
        .flat_map("triple", lambda n: [n] * 3)
        .map("check", check)
        .filter("small", lambda n: n < 50)
        .sink(MemorySink())
    )
    report = await p.run()
    counts = [(s.step_id, s.records_in, s.records_out, s.errors, s.dropped) for s in report.steps]
    # Source record 4 fails at its first child: the rest of its children never run.
    assert [
        ("split", 100, 199, 0, 0),
        ("even", 199, 99, 0, 100),
        ("triple", 99, 295, 0, 0),
        ("check", 295, 294, 1, 0),
        ("small", 294, 144, 0, 150),
        ("memory", 144, 144, 0, 0),
    ] == counts
    # One chain: every step of it counts the same runs (an expanding chain runs in parts).
    assert report.steps[0].batches == report.steps[4].batches >= 4
