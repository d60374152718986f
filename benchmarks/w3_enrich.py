"""W3: W1 plus one async HTTP call per record to a local service that answers after 1 ms.

Every record that survives the email filter is enriched with a ``tier`` fetched
from ``GET /enrich/<user>`` on an aiohttp server this module starts in a child
process on 127.0.0.1 (an ephemeral port), 64 calls at a time, through one
shared ``aiohttp.ClientSession`` (a 64-connection pool).

* **worker pool** (the limit): 64 tasks taking records from one iterator,
  each doing the whole work of a record (parse, filter, call, add cents,
  serialise) before taking the next: what a careful hand-written service does.
* **riprap**: the W1 pipeline with an async ``enrich`` map step at
  ``concurrency=64`` and the full policy stack on (retry, circuit breaker,
  bulkhead, attempt timeout and total timeout), embedded (``await
  pipeline.run()``), at the default batch size (1,000) and at 100 and 10:
  the step keeps 64 calls in flight across batch boundaries.
* **riprap no policies**: the same at 1,000, 100 and 10 with no policy on the
  call: the same work as the worker pool, so these rows show what the step's
  concurrency across batches reaches, and the policy stack's cost is the
  difference to the rows above.

Both run on uvloop when it is installed. Every run is bounded: exactly one
call per record, a deadline on the whole run, and the server exits when its
standard input closes or after ``--max-seconds``.

Run: ``python -m benchmarks.w3_enrich [--impl NAME] [--records N] [--json]``
(default 50,000 records, a few seconds per run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import orjson
from aiohttp import web

import riprap
import riprap.checkpoints
from benchmarks._child import (
    Result,
    as_a_riprap_run_sets,
    child_main,
    expected_count,
    make_input,
    start_measuring,
)
from benchmarks.bench_memory import CountSink, add_cents, has_email
from riprap.connectors.memory import IterableSource
from riprap.policies import Bulkhead, CircuitBreaker, Retry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 64
DELAY = 0.001
"""Seconds the service waits before it answers."""
RUN_DEADLINE = 600.0
"""No run may take longer than this many seconds."""
WARM_UP = 500
USE_UVLOOP = importlib.util.find_spec("uvloop") is not None
TIERS = (b'{"tier":"bronze"}', b'{"tier":"silver"}', b'{"tier":"gold"}')


async def _answer(request: web.Request) -> web.Response:
    await asyncio.sleep(request.app["delay"])
    user = request.match_info["user"]
    return web.Response(body=TIERS[len(user) % 3], content_type="application/json")


async def serve(delay: float, max_seconds: float) -> None:
    """Serve ``/enrich/{user}`` on 127.0.0.1; print the port; stop on stdin EOF or timeout."""
    app = web.Application()
    app["delay"] = delay
    app.router.add_get("/enrich/{user}", _answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        stdin = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stdin.read(), max_seconds)
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def enrichment_server(delay: float = DELAY) -> Iterator[str]:
    """Run the service in a child process; yield its base URL; stop it on exit."""
    command = [sys.executable, "-m", "benchmarks.w3_enrich", "--serve", "--delay", str(delay)]
    with subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdin is not None
        assert server.stdout is not None
        try:
            port = server.stdout.readline().strip()
            if not port.isdigit():
                raise SystemExit(f"the enrichment server did not start (printed {port!r})")
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stdin.close()  # the server's cue to stop
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


class Enricher:
    """The per-record call: fetch the user's tier and add it to the order."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def __call__(self, order: dict[str, Any]) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/enrich/{order['user']}") as response:
            response.raise_for_status()
            order["tier"] = orjson.loads(await response.read())["tier"]
        return order


async def worker_pool(records: list[bytes], enrich: Enricher) -> int:
    """The limit: 64 worker tasks taking records from one iterator, one call each at a time."""
    loads = orjson.loads
    dumps = orjson.dumps
    pending = iter(records)
    counts = [0] * CONCURRENCY

    async def worker(n: int) -> None:
        count = 0
        for raw in pending:
            order = loads(raw)
            if order["email"] is None:
                continue
            order = await enrich(order)
            dumps(add_cents(order))
            count += 1
        counts[n] = count

    async with anyio.create_task_group() as tg:
        for n in range(CONCURRENCY):
            tg.start_soon(worker, n)
    return sum(counts)


def enrich_pipeline(
    records: list[bytes],
    enrich: Enricher,
    sink: CountSink,
    batch_size: int | None = None,
    *,
    policies: bool = True,
) -> riprap.Pipeline:
    """W1's pipeline with the enrichment step, full policy stack on, otherwise at the defaults."""
    sizes = {} if batch_size is None else {"batch_size": batch_size}
    stack: dict[str, Any] = {}
    if policies:
        stack = {
            "retry": Retry(attempts=3, timeout=30.0, wait_initial=0.05, wait_max=1.0),
            "breaker": CircuitBreaker("enrich-api"),
            "bulkhead": Bulkhead(CONCURRENCY, name="enrich-api"),
            "attempt_timeout": 5.0,
            "timeout": 30.0,
        }
    return (
        riprap.Pipeline("bench-enrich", checkpoint=riprap.checkpoints.MemoryCheckpoints(), **sizes)
        .source(IterableSource("records", records))
        .map("parse", orjson.loads)
        .filter("has_email", has_email)
        .map("enrich", enrich, concurrency=CONCURRENCY, **stack)
        .map("add_cents", add_cents)
        .map("serialize", orjson.dumps)
        .sink(sink)
    )


async def run_riprap(
    records: list[bytes],
    enrich: Enricher,
    batch_size: int | None = None,
    *,
    policies: bool = True,
) -> int:
    """Run the enrichment pipeline once, embedded; return the records counted by the sink."""
    sink = CountSink()
    await enrich_pipeline(records, enrich, sink, batch_size, policies=policies).run()
    return sink.count


RUNS: dict[str, Callable[[list[bytes], Enricher], Awaitable[int]]] = {
    "worker pool": worker_pool,
    "riprap": run_riprap,
    "riprap batch 100": functools.partial(run_riprap, batch_size=100),
    "riprap batch 10": functools.partial(run_riprap, batch_size=10),
    "riprap no policies": functools.partial(run_riprap, policies=False),
    "riprap no policies batch 100": functools.partial(run_riprap, batch_size=100, policies=False),
    "riprap no policies batch 10": functools.partial(run_riprap, batch_size=10, policies=False),
}


def measure(name: str, args: argparse.Namespace) -> Result:
    """Start the service, warm up, then time one run of implementation ``name``.

    The process gets the settings every riprap run applies, whichever runs.
    """
    as_a_riprap_run_sets()
    records = make_input(args.records)
    run = RUNS[name]

    async def session_run() -> Result:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            enrich = Enricher(session, base)
            with anyio.fail_after(RUN_DEADLINE):
                await run(records[:WARM_UP], enrich)
                rss_start = start_measuring()
                started = time.perf_counter()
                count = await run(records, enrich)
                seconds = time.perf_counter() - started
        return {"seconds": seconds, "count": count, "rss_start_mib": round(rss_start, 1)}

    with enrichment_server() as base:
        result = anyio.run(
            session_run,
            backend="asyncio",
            backend_options={"use_uvloop": USE_UVLOOP},
        )
    if result["count"] != expected_count(args.records):
        raise SystemExit(f"counted {result['count']}, expected {expected_count(args.records)}")
    return result


IMPLEMENTATIONS = {name: functools.partial(measure, name) for name in RUNS}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "--serve" in args:  # the service's own process (see enrichment_server)
        parser = argparse.ArgumentParser(description="the enrichment service of W3")
        parser.add_argument("--serve", action="store_true")
        parser.add_argument("--delay", type=float, default=DELAY, help="seconds before answering")
        parser.add_argument("--max-seconds", type=float, default=RUN_DEADLINE + 60)
        options = parser.parse_args(args)
        anyio.run(
            serve,
            options.delay,
            options.max_seconds,
            backend="asyncio",
            backend_options={"use_uvloop": USE_UVLOOP},
        )
        return
    child_main(__doc__, IMPLEMENTATIONS, argv, default_records=50_000)


if __name__ == "__main__":
    main()
