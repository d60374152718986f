"""Every shipped alert rule means what it says, evaluated on scrapes of real runs.

Each test runs a pipeline whose dead-letter rate, lag or stall is known, fed
batch by batch while a virtual clock moves 30 seconds between scrapes of
its /metrics, and evaluates the rules of ``examples/monitoring`` on those
scrapes with the tests' own PromQL evaluator (``tests/_promql.py``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.observability
from riprap import SourceBatch, SourceContext
from riprap.connectors.memory import MemorySink
from riprap.policies import CircuitBreaker
from riprap.testing import VirtualClock, wait_all_tasks_blocked, wait_until
from tests._promql import Rule, Scrapes, evaluate, firing, load_rules

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from riprap.observability import HealthServer

pytestmark = pytest.mark.anyio

pytest.importorskip("yaml")

RULES = load_rules(
    (Path(__file__).parent.parent / "examples/monitoring/prometheus-alerts.yml").read_text()
)
STEP = 30.0
"""Virtual seconds between two scrapes."""

OLD_DEAD_LETTER_RULE = Rule(
    "RiprapDeadLetterRateHigh as first shipped",
    """sum by (pipeline) (rate(riprap_dead_letters_total[5m]))
         / clamp_min(sum by (pipeline) (rate(riprap_records_total{outcome="in"}[5m])), 1e-9)
         > 0.05""",
    600.0,
)
"""The rule as first shipped, dividing by the records entering every stage and the sink
(its filter on fused stage names is left out: series are per step id now)."""

PIPE = (("pipeline", "alerts"),)


class FedSource:
    """One partition fed by the test, batch by batch; its lag and record ages are set by it."""

    name = "fed"

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.send, self.receive = anyio.create_memory_object_stream[list[Any]](100)
        self.behind = 0
        self.age = 0.0
        self.next = 0

    async def open(self, context: SourceContext) -> None:
        self.next = context.positions.get("p0", 0)

    async def read(self, max_records: int) -> SourceBatch | None:
        try:
            values = await self.receive.receive()
        except anyio.EndOfStream:
            return None
        start, self.next = self.next, self.next + len(values)
        stamps: list[float | None] = [self.clock.time() - self.age] * len(values)
        return SourceBatch("p0", values, start=start, timestamps=stamps)

    def lag(self) -> dict[str, int]:
        return {"p0": self.behind}

    async def aclose(self) -> None:
        self.receive.close()


class Run:
    """A running pipeline, its fed source, its clock and its scrapes so far."""

    def __init__(
        self,
        running: riprap.RunningPipeline,
        source: FedSource,
        clock: VirtualClock,
        server: HealthServer,
        session: aiohttp.ClientSession,
    ) -> None:
        self.running = running
        self.source = source
        self.clock = clock
        self.server = server
        self.session = session
        self.scrapes = Scrapes()
        self.fed = 0

    async def feed(self, values: list[Any], *, wait: bool = True) -> None:
        """Hand the source a batch; wait until it is done unless the pipeline is stuck."""
        await self.source.send.send(values)
        self.fed += len(values)
        running = self.running

        def done() -> bool:
            stats = running.statistics()
            return stats.records_in == self.fed and (not wait or stats.in_flight == 0)

        await wait_until(done)

    async def tick(self) -> None:
        """Move the clock on by :data:`STEP` and scrape /metrics."""
        self.clock.advance(STEP)
        await wait_all_tasks_blocked()
        url = f"http://127.0.0.1:{self.server.port}/metrics"
        async with self.session.get(url) as response:
            text = await response.text()
        self.scrapes.add(self.clock.monotonic(), text)


@asynccontextmanager
async def fed_run(
    tmp_path: Path,
    *,
    steps: int = 3,
    sink: Any = None,
    breaker: CircuitBreaker | None = None,
    **options: Any,
) -> AsyncIterator[Run]:
    """A pipeline over a :class:`FedSource`: ``steps`` fused maps, the last failing on ``"bad"``.

    With ``breaker``, an async step calls through it before the sink.
    """
    clock = VirtualClock()
    source = FedSource(clock)

    def check(value: Any) -> Any:
        if value == "bad":
            raise riprap.DataError("bad record", reason="validation")
        return value

    p: Any = riprap.Pipeline(
        "alerts",
        checkpoint=riprap.checkpoints.MemoryCheckpoints(),
        dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
        dlq_guard=None,
        clock=clock,
        **options,
    ).source(source)
    for i in range(steps - 1):
        p = p.map(f"step{i}", lambda value: value)
    p = p.map("check", check)
    if breaker is not None:

        async def score(value: Any) -> Any:
            return value

        p = p.map("score", score, breaker=breaker)
    p = p.sink(sink or MemorySink())
    async with (
        p.open() as running,
        riprap.observability.serve_health(running) as server,
        aiohttp.ClientSession() as session,
    ):
        run = Run(running, source, clock, server, session)
        try:
            yield run
        finally:
            source.send.close()


def with_rate(bad: int, total: int = 100) -> list[str]:
    """A batch of ``total`` records, ``bad`` of them dead-lettered by the pipeline."""
    return ["bad"] * bad + ["ok"] * (total - bad)


@pytest.mark.parametrize(("percent", "fires"), [(9, True), (1, False)])
async def test_dead_letter_rate_rule_fires_at_9_percent_not_at_1(
    tmp_path: Path, percent: int, fires: bool
) -> None:
    """RiprapDeadLetterRateHigh divides by records read: 9% fires after 10 minutes, 1% never."""
    rule = RULES["RiprapDeadLetterRateHigh"]
    async with fed_run(tmp_path) as run:
        for _ in range(25):  # 12.5 minutes, 100 records every 30 seconds
            await run.feed(with_rate(percent))
            await run.tick()
    rate = evaluate(
        "sum by (pipeline) (rate(riprap_dead_letters_total[5m]))"
        " / sum by (pipeline) (rate(riprap_source_records_total[5m]))",
        run.scrapes,
        run.scrapes.times[-1],
    )
    assert isinstance(rate, dict)
    assert [PIPE] == list(rate)
    assert percent / 100 == pytest.approx(rate[PIPE])
    assert ({PIPE} if fires else set()) == firing(rule, run.scrapes)
    assert set() == firing(rule, run.scrapes, at=run.scrapes.times[18])  # not before 10m
    assert set() == firing(OLD_DEAD_LETTER_RULE, run.scrapes)  # the old one missed 9%
    assert set() == firing(RULES["RiprapStalled"], run.scrapes)


@pytest.mark.parametrize(("growth", "fires"), [(500, True), (0, False)])
async def test_lag_growing_rule_fires_only_while_lag_grows(
    tmp_path: Path, growth: int, fires: bool
) -> None:
    """RiprapLagGrowing fires after 15 minutes of growing lag, not on a high but steady one."""
    async with fed_run(tmp_path) as run:
        run.source.behind = 10_000
        for _ in range(35):
            run.source.behind += growth
            await run.feed(with_rate(0))
            await run.tick()
    assert ({PIPE} if fires else set()) == firing(RULES["RiprapLagGrowing"], run.scrapes)


@pytest.mark.parametrize(("age", "fires"), [(900.0, True), (60.0, False)])
async def test_lag_high_rule_reads_lag_in_seconds(tmp_path: Path, age: float, fires: bool) -> None:
    """RiprapLagHigh fires when the records read are 15 minutes old for 10 minutes, not at 1."""
    async with fed_run(tmp_path) as run:
        run.source.behind = 1_000
        run.source.age = age
        for _ in range(25):
            await run.feed(with_rate(0))
            await run.tick()
        run.source.behind = 0  # caught up: 0 seconds behind, however old the last record
        await run.tick()
        caught_up = evaluate("riprap_source_lag_seconds", run.scrapes, run.scrapes.times[-1])
    assert ({PIPE} if fires else set()) == firing(
        RULES["RiprapLagHigh"], run.scrapes, at=run.scrapes.times[-2]
    )
    assert {(("partition", "p0"), *PIPE): 0.0} == caught_up


async def test_stall_rule_fires_on_a_stalled_pipeline(tmp_path: Path) -> None:
    """RiprapStalled fires when records are in flight and none is done for 10 minutes."""
    release = anyio.Event()

    class StuckSink:
        name = "stuck"
        idempotent = False

        def __init__(self) -> None:
            self.writes = 0

        async def open(self) -> None:
            return None

        async def write(self, batch: riprap.Batch) -> None:
            self.writes += 1
            if self.writes > 3:
                await release.wait()

        async def flush(self) -> None:
            return None

        async def aclose(self) -> None:
            return None

    rule = RULES["RiprapStalled"]
    async with fed_run(tmp_path, sink=StuckSink()) as run:
        for _ in range(3):
            await run.feed(with_rate(0))
            await run.tick()
        await run.feed(with_rate(0), wait=False)  # the sink never finishes this one
        for _ in range(21):
            await run.tick()
        assert set() == firing(rule, run.scrapes, at=run.scrapes.times[-12])
        assert {PIPE} == firing(rule, run.scrapes)
        release.set()
        await run.feed(with_rate(0))
        await run.tick()
    assert set() == firing(rule, run.scrapes)


@pytest.mark.parametrize(("interval", "fires"), [(3600.0, True), (60.0, False)])
async def test_checkpoint_stale_rule(tmp_path: Path, interval: float, fires: bool) -> None:
    """RiprapCheckpointStale fires 7 minutes after the last checkpoint, never with one a minute."""
    async with fed_run(tmp_path, checkpoint_interval=interval) as run:
        for _ in range(16):
            await run.feed(with_rate(0))
            await run.tick()
    rule = RULES["RiprapCheckpointStale"]
    assert ({PIPE} if fires else set()) == firing(rule, run.scrapes)
    assert set() == firing(rule, run.scrapes, at=run.scrapes.times[12])  # 6.5 minutes


async def test_breaker_open_rule(tmp_path: Path) -> None:
    """RiprapBreakerOpen fires once a breaker has been open for 5 minutes, and not before."""
    breaker = CircuitBreaker("scores")
    async with fed_run(tmp_path, breaker=breaker) as run:
        for _ in range(3):
            await run.feed(with_rate(0))
            await run.tick()
        breaker.force_open()
        for _ in range(11):
            await run.tick()
    rule = RULES["RiprapBreakerOpen"]
    labels = (("dependency", "scores"), *PIPE)
    assert {labels} == firing(rule, run.scrapes)
    assert set() == firing(rule, run.scrapes, at=run.scrapes.times[-3])


def test_every_shipped_rule_is_tested() -> None:
    """A rule added to the file without a test here fails this one."""
    tested = {
        "RiprapDeadLetterRateHigh",
        "RiprapStalled",
        "RiprapBreakerOpen",
        "RiprapCheckpointStale",
        "RiprapLagGrowing",
        "RiprapLagHigh",
        "RiprapRestarting",  # these two in tests/engine/test_statistics.py
        "RiprapCrashLoopQuarantine",
    }
    assert tested == set(RULES)
