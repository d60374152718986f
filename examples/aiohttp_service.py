"""A riprap pipeline embedded in an aiohttp web service.

The pipeline lives exactly as long as the application: a cleanup context
starts it before the server accepts requests and, when the server shuts down
(Ctrl+C, SIGTERM), stops it gracefully: no new reads, records in flight drain,
the sink is flushed and a final checkpoint written. While it runs:

    GET  /stats       live statistics of the pipeline, as JSON
    POST /checkpoint  write a checkpoint now; answers with the new count and positions

The pipeline turns synthetic sensor readings into rows of an SQLite table
(an idempotent upsert), checkpointing to SQLite. Run it with::

    python examples/aiohttp_service.py [--port 8080] [--data-dir riprap-service]

(the port may also come from the ``RIPRAP_PORT`` environment variable), then
``curl 127.0.0.1:8080/stats`` and ``curl -X POST 127.0.0.1:8080/checkpoint``.
Stop it and start it again: the pipeline resumes where its checkpoint says,
and replayed readings rewrite the same rows.

Embedded pipelines never touch signals: aiohttp handles them and shuts the
application down, which is what stops the pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
from aiohttp import web

import riprap
import riprap.checkpoints
from riprap.connectors.sqlite import SqliteSink

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

log = logging.getLogger("aiohttp_service")

PARTITION = "sensors"
PIPELINE = web.AppKey("pipeline", riprap.RunningPipeline)
"""The running pipeline, set while the application runs."""
REPORTS: web.AppKey[list[riprap.RunReport]] = web.AppKey("reports")
"""The report of the pipeline's run, appended when the application has shut down."""


def reading(n: int) -> dict[str, Any]:
    """The ``n``-th sensor reading: a pure function of ``n``, so a replay rewrites the same row."""
    return {
        "id": n,
        "sensor": f"sensor-{n % 4}",
        "celsius": round(20.0 + 5.0 * math.sin(n / 100), 2),
    }


@final
class SensorSource:
    """Synthetic sensor readings, ``rate`` per second, forever; position = reading number.

    Args:
        rate: Readings produced per second.
        tick: Seconds between two batches.
        name: The step name of the source.
    """

    def __init__(self, *, rate: float = 200.0, tick: float = 0.05, name: str = "sensors") -> None:
        self.name = name
        self.rate = rate
        self.tick = tick
        self._next = 0

    async def open(self, context: riprap.SourceContext) -> None:
        """Resume after the last checkpointed reading."""
        self._next = context.positions.get(PARTITION, 0)
        await anyio.lowlevel.checkpoint()

    async def read(self, max_records: int) -> riprap.SourceBatch:
        """Wait for the next tick's readings (a stop cancels the wait and loses nothing)."""
        count = max(1, min(max_records, round(self.rate * self.tick)))
        await anyio.sleep(count / self.rate)
        start = self._next
        self._next = start + count
        values = [reading(n) for n in range(start, start + count)]
        return riprap.SourceBatch(PARTITION, values, start=start)

    async def aclose(self) -> None:
        """Nothing to release."""
        await anyio.lowlevel.checkpoint()


def to_fahrenheit(value: dict[str, Any]) -> dict[str, Any]:
    """Add the temperature in degrees Fahrenheit."""
    value["fahrenheit"] = round(value["celsius"] * 9 / 5 + 32, 2)
    return value


def build_pipeline(
    data_dir: str | os.PathLike[str],
    *,
    rate: float = 200.0,
    checkpoint_interval: float = 5.0,
) -> riprap.Pipeline:
    """Sensor readings -> Fahrenheit -> SQLite table ``readings``, checkpointed in ``data_dir``.

    Args:
        data_dir: An existing directory for ``readings.db`` and ``checkpoints.db``.
        rate: Readings per second.
        checkpoint_interval: Seconds between periodic checkpoints.
    """
    data = Path(data_dir)
    return (
        riprap.Pipeline(
            "sensors",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(data / "checkpoints.db"),
            checkpoint_interval=checkpoint_interval,
            batch_size=100,
            max_in_flight=1_000,
            drain_timeout=10.0,
        )
        .source(SensorSource(rate=rate))
        .map("fahrenheit", to_fahrenheit)
        .sink(SqliteSink(data / "readings.db", table="readings", key="id"))
    )


def run_with_app(
    pipeline: riprap.Pipeline,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running ``pipeline`` for the application's lifetime."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with pipeline.open() as running:
            app[PIPELINE] = running
            yield
            # The server has stopped taking requests: drain and checkpoint.
            running.stop()
            report = await running.wait()
        app[REPORTS].append(report)
        log.info("%s", report.format())

    return context


def statistics_json(statistics: riprap.RunStatistics) -> dict[str, Any]:
    """Statistics as a JSON-ready dict."""
    data = dataclasses.asdict(statistics)
    data["positions"] = dict(statistics.positions)
    return data


async def get_stats(request: web.Request) -> web.Response:
    """``GET /stats``: the pipeline's live statistics."""
    return web.json_response(statistics_json(request.app[PIPELINE].statistics()))


async def post_checkpoint(request: web.Request) -> web.Response:
    """``POST /checkpoint``: write a checkpoint now; 503 if the store refuses it."""
    running = request.app[PIPELINE]
    try:
        await running.checkpoint()
    except riprap.checkpoints.CheckpointError as error:
        return web.json_response({"error": str(error)}, status=503)
    statistics = running.statistics()
    return web.json_response(
        {"checkpoints": statistics.checkpoints, "positions": dict(statistics.positions)}
    )


def create_app(pipeline: riprap.Pipeline) -> web.Application:
    """The web application, running ``pipeline`` while it is up."""
    app = web.Application()
    app[REPORTS] = []
    app.cleanup_ctx.append(run_with_app(pipeline))
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/checkpoint", post_checkpoint)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until interrupted; the pipeline stops cleanly with the server."""
    parser = argparse.ArgumentParser(description="A riprap pipeline inside an aiohttp service.")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("RIPRAP_PORT", "8080")),
        help="port to serve on (default: $RIPRAP_PORT or 8080)",
    )
    parser.add_argument("--data-dir", default="riprap-service", help="where the data files go")
    parser.add_argument("--rate", type=float, default=200.0, help="sensor readings per second")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    app = create_app(build_pipeline(args.data_dir, rate=args.rate))
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
