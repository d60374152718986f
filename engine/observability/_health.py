"""The health server: /metrics, /healthz and /readyz for a running pipeline (aiohttp).

/healthz answers while the event loop runs. /readyz is red when the run has
ended, a circuit breaker has been open longer than allowed, the last
checkpoint is too old, or the run has stalled: records are in flight but none
has finished for ``stall_after`` seconds (the silent stall users of other
engines report most). Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from riprap._core.errors import ConfigError
from riprap.observability._exposition import render

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from riprap.observability._statistics import RunStatistics


class MonitoredRun(Protocol):
    """What the health server needs of a run: :class:`~riprap.RunningPipeline` is one."""

    def statistics(self) -> RunStatistics:
        """The run's statistics snapshot right now."""
        ...

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The run's own Prometheus registry."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """Where the health server listens and what /readyz tolerates.

    Attributes:
        host: Interface to bind; loopback unless you mean to expose it.
        port: TCP port; 0 picks a free one (see :attr:`HealthServer.port`).
        max_breaker_open: Seconds a breaker may stay open before /readyz turns red.
        max_checkpoint_age: Seconds since the last checkpoint before /readyz turns red.
        stall_after: Seconds with records in flight and none finished that count as a stall.
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_breaker_open: float = 300.0
    max_checkpoint_age: float = 300.0
    stall_after: float = 120.0

    def __post_init__(self) -> None:
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("health.port", f"must be a TCP port from 0 to 65535, got {port!r}")
        for name in ("max_breaker_open", "max_checkpoint_age", "stall_after"):
            seconds = getattr(self, name)
            number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
            if not number or not math.isfinite(seconds) or seconds <= 0:
                raise ConfigError(
                    f"health.{name}",
                    f"must be a positive, finite number of seconds, got {seconds!r}",
                )


def check_bindable(config: HealthConfig) -> None:
    """Raise now if the health server could not listen where ``config`` says (blocking).

    Called before a run starts, so that a port in use stops it before any
    record is read; binding for real may still fail later (another process
    may take the port meanwhile), with the same error.

    Raises:
        ConfigError: ``health.port`` is in use or privileged, or ``health.host``
            is not an address of this machine.
    """
    if config.port == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError("health.host", f"{config.host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            if os.name == "posix":  # as asyncio's servers do: a port in TIME_WAIT is free
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise _bind_error(config, exc) from None


def _bind_error(config: HealthConfig, error: OSError) -> OSError | ConfigError:
    where = f"{config.host}:{config.port}"
    if error.errno == errno.EADDRINUSE:
        return ConfigError("health.port", f"{where} is in use")
    if error.errno == errno.EACCES:
        return ConfigError("health.port", f"{where}: permission denied (a privileged port?)")
    if error.errno == errno.EADDRNOTAVAIL:
        return ConfigError("health.host", f"{where}: not an address of this machine")
    return error


@final
class StallDetector:
    """Notices when records are pending but nothing finishes any more."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self._finished = -1
        self._since = 0.0

    def stalled(self, *, finished: int, in_flight: int, now: float) -> float | None:
        """Seconds stalled, if stalled; call on every readiness check."""
        if finished != self._finished or in_flight == 0:
            self._finished = finished
            self._since = now
            return None
        stuck = now - self._since
        return stuck if stuck >= self.stall_after else None


def readiness(stats: RunStatistics, config: HealthConfig, stall: StallDetector) -> list[str]:
    """Why the run ``stats`` describes is not ready (empty when it is)."""
    problems: list[str] = []
    if stats.outcome is not None:
        problems.append(f"run ended ({stats.outcome})")
    now = stats.at
    for dependency, since in sorted(stats.policies.open_since.items()):
        if now - since > config.max_breaker_open:
            problems.append(f"breaker {dependency!r} open for {now - since:.0f}s")
    age = stats.checkpoint.age
    if age is not None and age > config.max_checkpoint_age:
        problems.append(f"last checkpoint {age:.0f}s ago")
    finished = stats.records_out + stats.dropped + stats.dead_lettered
    stuck = stall.stalled(finished=finished, in_flight=stats.in_flight, now=now)
    if stuck is not None:
        problems.append(f"stalled: {stats.in_flight} records in flight, none done for {stuck:.0f}s")
    return problems


@final
class HealthServer:
    """A running health server; :attr:`port` is the bound port."""

    def __init__(self, runner: web.AppRunner, site: web.TCPSite) -> None:
        self._runner = runner
        self._site = site

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        server = self._site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1])


@asynccontextmanager
async def serve_health(
    running: MonitoredRun, config: HealthConfig | None = None
) -> AsyncIterator[HealthServer]:
    """Serve /metrics, /healthz and /readyz for ``running`` while the block runs.

    Only ``running.statistics()`` and ``running.metrics_registry`` are used.
    """
    from aiohttp import web  # here: importing riprap should not cost aiohttp's import

    config = config or HealthConfig()
    stall = StallDetector(config.stall_after)
    registry = running.metrics_registry

    async def metrics(_: web.Request) -> web.Response:
        body = render(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def readyz(_: web.Request) -> web.Response:
        problems = readiness(running.statistics(), config, stall)
        body = orjson.dumps({"ready": not problems, "problems": problems})
        return web.Response(
            body=body, status=503 if problems else 200, content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        try:
            await site.start()
        except OSError as exc:
            raise _bind_error(config, exc) from None
        yield HealthServer(runner, site)
    finally:
        await runner.cleanup()
