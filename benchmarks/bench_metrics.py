"""Cost of metrics: W1 with a health server scraped every 100 ms against W1 without one.

riprap's metrics are read from counters the runtime keeps per batch anyway, so
"metrics on" means a health server running and Prometheus scraping it. The
scraper is a process of its own, as Prometheus is: what it costs to send
requests and parse answers is not riprap's.

Run: ``python -m benchmarks.bench_metrics [--records N] [--repeat K]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time

import anyio

import riprap
import riprap.observability
from benchmarks.bench_memory import CountSink, make_records, riprap_pipeline

SCRAPE_EVERY = 0.1

SCRAPER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            answer.read()
    except OSError:
        pass
    time.sleep(every)
"""
"""Prometheus's part: GET /metrics every ``SCRAPE_EVERY`` s until terminated (10 min at most)."""


async def run_once(records: list[bytes], *, scrape: bool) -> float:
    """Seconds for one run, with or without a server being scraped."""
    sink = CountSink()
    pipeline = riprap_pipeline(records, sink)
    started = time.perf_counter()
    async with pipeline.open() as running:
        if not scrape:
            await running.wait()
        else:
            async with riprap.observability.serve_health(running) as server:
                url = f"http://127.0.0.1:{server.port}/metrics"
                scraper = await anyio.open_process(
                    [sys.executable, "-c", SCRAPER, url, str(SCRAPE_EVERY)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
                try:
                    await running.wait()
                finally:
                    scraper.terminate()
                    with anyio.fail_after(10, shield=True):
                        await scraper.wait()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    records = make_records(args.records)

    async def measure() -> list[float]:
        await run_once(records[:1_000], scrape=True)  # warm-up
        ratios = []
        for _ in range(args.repeat):
            gc.collect()
            off = await run_once(records, scrape=False)
            gc.collect()
            on = await run_once(records, scrape=True)
            ratios.append(off / on)
        return ratios

    ratios = anyio.run(measure, backend="asyncio", backend_options={"use_uvloop": True})
    ratio = statistics.median(ratios)
    print(f"M1 metrics cost, W1 with {args.records:,} records, median of {args.repeat} rounds")
    print(f"{'variant':<34}{'vs no scraping':>15}")
    print(f"{'no health server':<34}{1.0:>15.1%}")
    print(f"{'scraped every 100 ms':<34}{ratio:>15.1%}")


if __name__ == "__main__":
    main()
