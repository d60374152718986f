"""Admission against real aiohttp servers: what reaches a dependency while its breaker is open.

The server runs in the test's event loop and notes the breaker's state as each
request arrives, so the counts are what the dependency saw, not what the
policies believe they let through.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from aiohttp import web

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.http import HttpEnricher
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.policies import (
    BreakerConfig,
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    CircuitStateChanged,
    Policies,
    PolicyEvent,
    PolicyStack,
    Retry,
)
from riprap.testing import VirtualClock, wait_all_tasks_blocked, wait_until

from ._servers import serve

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.network]

CALLERS = 100


class Dependency:
    """A server that notes the breaker's state per request and holds requests in groups.

    Each request waits until ``hold`` requests of the current phase have
    arrived, then all of them get ``status``: the test decides exactly which
    requests are in flight together when the breaker changes state.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.arrivals: list[str] = []
        self.status = 503
        self.hold = 1
        self._phase_start = 0
        self._gate = asyncio.Event()

    def phase(self, *, status: int, hold: int) -> None:
        """From now on answer ``status``, to groups of ``hold`` requests."""
        self.status = status
        self.hold = hold
        self._phase_start = len(self.arrivals)
        self._gate = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(str(self.breaker.state))
        gate = self._gate
        if len(self.arrivals) - self._phase_start >= self.hold:
            gate.set()
        await gate.wait()
        if self.status == 200:
            return web.json_response({"ok": True})
        return web.Response(status=self.status, text="down")


def tripping_breaker(clock: VirtualClock, *, probes: int = 3) -> CircuitBreaker:
    """A breaker that opens on its first failure and stays open until ``clock`` is advanced."""
    config = BreakerConfig(
        window_size=1, minimum_calls=1, open_duration=5.0, half_open_probes=probes
    )
    return CircuitBreaker("scores", config, clock=clock)


async def call_all(call: Callable[[int], Awaitable[Any]], n: int) -> list[str]:
    """Call ``call(i)`` for ``n`` values at once; the name of each outcome, in order."""
    outcomes = [""] * n

    async def one(i: int) -> None:
        try:
            await call(i)
            outcomes[i] = "ok"
        except Exception as exc:
            outcomes[i] = type(exc).__name__

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return outcomes


async def test_callers_queued_for_a_bulkhead_do_not_reach_a_dependency_cut_off_meanwhile() -> None:
    """With Bulkhead(10) and 100 callers, the 90 queued when the breaker opened never arrive."""
    clock = VirtualClock()
    breaker = tripping_breaker(clock)
    dependency = Dependency(breaker)
    dependency.phase(status=503, hold=10)
    stack = PolicyStack(Policies(breaker=breaker, bulkhead=Bulkhead(10)), clock=clock)
    async with (
        serve(dependency.handle) as base,
        HttpEnricher(f"{base}/score", limit=CALLERS) as enrich,
    ):
        outcomes = await call_all(stack.wrap(enrich), CALLERS)
    assert ["closed"] * 10 == dependency.arrivals
    assert {"HttpTransientError": 10, "CircuitOpenError": 90} == Counter(outcomes)


async def test_waiting_callers_send_only_the_probes_while_half_open() -> None:
    """100 callers waiting behind Bulkhead(10): nothing arrives while open, 3 probes half-open."""
    clock = VirtualClock()
    breaker = tripping_breaker(clock, probes=3)
    dependency = Dependency(breaker)
    dependency.phase(status=503, hold=10)
    stack = PolicyStack(
        Policies(breaker=breaker, on_open="wait", bulkhead=Bulkhead(10)), clock=clock
    )
    outcomes: list[str] = []

    async def run(call: Callable[[int], Awaitable[Any]]) -> None:
        outcomes.extend(await call_all(call, CALLERS))

    async with (
        serve(dependency.handle) as base,
        HttpEnricher(f"{base}/score", limit=CALLERS) as enrich,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(run, stack.wrap(enrich))
        await wait_until(lambda: CircuitState.OPEN == breaker.state)
        await wait_all_tasks_blocked()
        during_outage = list(dependency.arrivals)  # the other 90 wait, sending nothing
        dependency.phase(status=200, hold=3)  # back, answering the probes together
        clock.advance(5.0)
    assert ["closed"] * 10 == during_outage
    assert {"closed": 10 + 87, "half_open": 3} == Counter(dependency.arrivals)
    assert {"HttpTransientError": 10, "ok": 90} == Counter(outcomes)


async def test_enricher_calls_queued_for_the_pool_do_not_reach_a_dependency_cut_off() -> None:
    """HttpEnricher(limit=10) with 100 concurrent calls: only the first 10 reach a dying server."""
    clock = VirtualClock()
    breaker = tripping_breaker(clock)
    dependency = Dependency(breaker)
    dependency.phase(status=503, hold=10)
    stack = PolicyStack(Policies(breaker=breaker), clock=clock)
    async with (
        serve(dependency.handle) as base,
        HttpEnricher(f"{base}/score", limit=10) as enrich,
    ):
        outcomes = await call_all(stack.wrap(enrich), CALLERS)
    assert ["closed"] * 10 == dependency.arrivals
    assert {"HttpTransientError": 10, "CircuitOpenError": 90} == Counter(outcomes)


async def test_outage_behind_a_waiting_breaker_loses_no_record_and_spares_the_server(
    tmp_path: Path,
) -> None:
    """A 60 s outage (far past the retry schedule): no dead letter, nothing sent while open."""
    clock = VirtualClock()
    arrivals: list[str] = []
    breaker = tripping_breaker(clock, probes=2)
    first_ten = asyncio.Event()
    episodes: list[float] = []

    def watch(event: PolicyEvent) -> None:
        if isinstance(event, CircuitStateChanged) and CircuitState.HALF_OPEN == event.new:
            episodes.append(event.at)

    async def scores(request: web.Request) -> web.Response:
        arrivals.append(str(breaker.state))
        if len(arrivals) >= 10:
            first_ten.set()
        if clock.monotonic() < 60.0:
            # The first requests fail together, once all of them have arrived.
            with anyio.move_on_after(1.0):
                await first_ten.wait()
            return web.Response(status=503)
        return web.json_response({"score": int(request.path.rsplit("/", 1)[1]) * 2})

    dlq = tmp_path / "dlq.jsonl"
    sink = MemorySink()
    async with serve(scores) as base:
        enrich = HttpEnricher(
            lambda v: f"{base}/score/{v}", merge=lambda v, d: {"id": v, **d}, limit=10
        )
        pipeline = (
            riprap.Pipeline(
                "outage",
                checkpoint=riprap.checkpoints.MemoryCheckpoints(),
                clock=clock,
                batch_size=100,
                max_in_flight=300,
                dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
                policy_hooks=(watch,),
            )
            .source(IterableSource("ids", list(range(300))))
            .map(
                "enrich",
                enrich,
                concurrency=CALLERS,
                retry=Retry(attempts=4, wait_initial=0.1, wait_max=1.0),
                breaker=breaker,
                on_open="wait",
            )
            .sink(sink)
        )
        async with enrich, clock.autojump():
            report = await pipeline.run()
    assert [{"id": i, "score": i * 2} for i in range(300)] == sink.values
    assert {} == dict(report.dead_lettered)
    seen = Counter(arrivals)
    assert 0 == seen["open"]
    assert len(episodes) >= 5  # the outage lasted many open durations
    assert seen["half_open"] <= 2 * len(episodes)  # nothing beyond the probes
