"""Helpers for the WebhookSource tests: a running pipeline, a POST, a stalled sink, held bodies."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio

import riprap
import riprap.checkpoints

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


Answer = tuple[int, Any, str | None]


@asynccontextmanager
async def running(
    source: riprap.Source, sink: Any, **options: Any
) -> AsyncIterator[tuple[riprap.RunningPipeline, aiohttp.ClientSession]]:
    """Run source -> sink (checkpoints only on demand unless told) with a client session."""
    options.setdefault("checkpoint_interval", 3600.0)
    options.setdefault("checkpoint", riprap.checkpoints.MemoryCheckpoints())
    pipeline = riprap.Pipeline("hooks", **options).source(source).sink(sink)
    async with pipeline.open() as run, aiohttp.ClientSession() as client:
        yield run, client


async def post(
    client: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> Answer:
    """POST ``body`` (bytes as is, anything else as JSON); return status, JSON body, Retry-After."""
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with client.post(url, headers=headers, **kwargs) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


class GatedSink:
    """A sink whose writes wait for :attr:`gate` (a stalled pipeline while it is not set)."""

    name = "gated"
    idempotent = False

    def __init__(self) -> None:
        self.started = 0
        self.gate = anyio.Event()

    async def open(self) -> None: ...

    async def write(self, batch: riprap.Batch) -> None:
        self.started += 1
        await self.gate.wait()

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


class HeldBody:
    """A request body whose headers go out at once and whose bytes only after :meth:`release`.

    :attr:`sent` counts the body bytes handed to the connection, so a test
    can tell that an answer came before any of the body was sent.
    """

    def __init__(self, body: bytes, *, chunk: int = 1 << 16, length: bool = True) -> None:
        self.body = body
        self.chunk = chunk
        self.length = length
        self.sent = 0
        self._gate = anyio.Event()

    def release(self) -> None:
        """Let the body go."""
        self._gate.set()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """JSON with a ``Content-Length`` (none when ``length=False``: chunked), plus ``extra``."""
        headers = {"Content-Type": "application/json", **(extra or {})}
        if self.length:
            headers["Content-Length"] = str(len(self.body))
        return headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in chunks, after an empty one that sends the request headers alone."""
        yield b""
        await self._gate.wait()
        for start in range(0, len(self.body), self.chunk):
            piece = self.body[start : start + self.chunk]
            self.sent += len(piece)
            yield piece


async def post_held(
    client: aiohttp.ClientSession, url: str, held: HeldBody, headers: dict[str, str] | None = None
) -> Answer:
    """POST a :class:`HeldBody`; return status, JSON body and Retry-After."""
    async with client.post(url, data=held.chunks(), headers=held.headers(headers)) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")
