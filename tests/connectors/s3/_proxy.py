"""A fault-injecting HTTP proxy in front of the moto S3 server, on 127.0.0.1.

Each :class:`Fault` names an action, the requests it applies to (method and a
piece of the path, which holds the bucket and key) and how many of them it
hits. Every fault is deterministic: no randomness, so a failing test fails
the same way every time.

* ``reset``: forward the request, let S3 store and answer it, then cut the
  connection: the client sees a reset for a request that took effect.
* ``short_length``: forward a GET and answer with the first bytes only, with
  a ``Content-Length`` that matches them: a lie the client cannot see in the
  response itself.
* ``truncate``: forward a GET, announce the whole ``Content-Length``, send
  the first bytes and cut the connection mid-body.
* ``unavailable``: answer 503 ``ServiceUnavailable`` without forwarding.
"""

from __future__ import annotations

import collections
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, final
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from tests.connectors.http._servers import serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

Action = Literal["reset", "short_length", "truncate", "unavailable"]

UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Service is unable to handle request.</Message><RequestId>1</RequestId></Error>"
)
"""What S3 answers with a 503."""

_HOP_BY_HOP = frozenset(("host", "content-length", "transfer-encoding", "connection"))


@final
@dataclass(frozen=True, slots=True)
class Fault:
    """One rule of the proxy.

    Attributes:
        action: What to do (see the module docstring).
        method: The HTTP method it applies to.
        path: Only requests whose (unquoted) path contains this.
        times: How many requests it hits; ``None``: every one that matches.
        every: Hit only every ``every``-th matching request (the ``every``-th, ...).
        keep: The fraction of the body that ``short_length`` and ``truncate`` send.
    """

    action: Action
    method: str
    path: str = ""
    times: int | None = 1
    every: int = 1
    keep: float = 0.5


@final
class _Rule:
    """A fault and how often it has matched and hit."""

    __slots__ = ("fault", "hits", "seen")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.seen = 0
        self.hits = 0

    def fires(self, request: web.Request) -> bool:
        fault = self.fault
        if request.method != fault.method or fault.path not in unquote(request.path):
            return False
        if fault.times is not None and self.hits >= fault.times:
            return False
        self.seen += 1
        if self.seen % fault.every:
            return False
        self.hits += 1
        return True


@final
class FaultProxy:
    """Forwards requests to ``upstream``, injecting the faults added with :meth:`add`.

    ``injected`` counts the faults injected by action; ``calls`` every request by
    method, ``requests`` by method and (unquoted) path.
    """

    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.session = session
        self.injected: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._rules: list[_Rule] = []

    def add(self, *faults: Fault) -> None:
        """Inject ``faults`` from the next request on (the first that fires wins)."""
        self._rules.extend(_Rule(fault) for fault in faults)

    def clear(self) -> None:
        """Inject nothing more."""
        self._rules.clear()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward ``request``, or fault it."""
        self.calls[request.method] += 1
        self.requests[request.method, unquote(request.path)] += 1
        fault = next((rule.fault for rule in self._rules if rule.fires(request)), None)
        body = await request.read()
        if fault is not None:
            self.injected[fault.action] += 1
            if fault.action == "unavailable":
                return web.Response(status=503, body=UNAVAILABLE, content_type="application/xml")
        status, headers, data = await self._forward(request, body)
        if fault is None:
            return web.Response(status=status, headers=headers, body=data)
        if fault.action == "reset":
            return _reset(request)
        kept = data[: int(len(data) * fault.keep)]
        if fault.action == "short_length":
            return web.Response(status=status, headers=headers, body=kept)
        return await _truncated(request, status, headers, kept, len(data))

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self.session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return answer.status, kept, data


def _reset(request: web.Request) -> web.StreamResponse:
    """Abort the connection (RST, no answer); the response returned is never sent."""
    transport = request.transport
    assert transport is not None
    transport.abort()
    return web.Response(status=500)


async def _truncated(
    request: web.Request, status: int, headers: dict[str, str], kept: bytes, size: int
) -> web.StreamResponse:
    """Announce ``size`` bytes, send ``kept``, then abort the connection."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = size
    await response.prepare(request)
    await response.write(kept)
    return _reset(request)


@asynccontextmanager
async def fault_proxy(upstream: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A :class:`FaultProxy` in front of ``upstream`` on 127.0.0.1, and its URL."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        proxy = FaultProxy(upstream, session)
        async with serve(proxy.handle) as url:
            yield proxy, url
