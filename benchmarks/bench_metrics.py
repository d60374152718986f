"""Cost of metrics: W1 with a health server scraped every 100 ms against W1 without one.

riprap's metrics are read from counters the runtime keeps per batch anyway, so
"metrics on" means a health server running and Prometheus scraping it.

Run: ``python -m benchmarks.bench_metrics [--records N] [--repeat K]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import aiohttp
import anyio

import riprap
import riprap.observability
from benchmarks.bench_memory import CountSink, make_records, riprap_pipeline

SCRAPE_EVERY = 0.1


async def run_once(records: list[bytes], *, scrape: bool) -> float:
    """Seconds for one run, with or without a server being scraped."""
    sink = CountSink()
    pipeline = riprap_pipeline(records, sink)
    started = time.perf_counter()
    async with pipeline.open() as running:
        if not scrape:
            await running.wait()
        else:
            async with (
                riprap.observability.serve_health(running) as server,
                aiohttp.ClientSession() as session,
                anyio.create_task_group() as tg,
            ):

                async def scraper() -> None:
                    url = f"http://127.0.0.1:{server.port}/metrics"
                    while True:
                        async with session.get(url) as response:
                            await response.read()
                        await anyio.sleep(SCRAPE_EVERY)

                tg.start_soon(scraper)
                await running.wait()
                tg.cancel_scope.cancel()
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
