"""A source fed by HTTP POSTs, answering 2xx only once its records are checkpointed."""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
import orjson
from aiohttp import web

from riprap import ConfigError, DecodeError, SourceBatch
from riprap.connectors.json_codec import parse_json_line

from ._client import bind_error, check_positive

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap import SourceContext

SIGNATURE_HEADER = "X-Riprap-Signature"
"""Header holding the hex HMAC-SHA256 of the body (optionally prefixed ``sha256=``)."""


@final
class _Pending:
    """A request waiting for the checkpoint that covers its records."""

    __slots__ = ("end", "event", "ok")

    def __init__(self, end: int) -> None:
        self.end = end
        self.event = anyio.Event()
        self.ok = False


def _answer(status: int, body: Mapping[str, Any], retry_after: float | None = None) -> web.Response:
    headers = {} if retry_after is None else {"Retry-After": str(max(1, round(retry_after)))}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


@final
class WebhookSource:
    """An HTTP server whose POSTed JSON records feed the pipeline.

    A request body is a JSON object (one record) or an array (one record per
    element). Records get consecutive positions in one partition as they
    arrive. The server answers **200 only after a checkpoint covering every
    record of the request has been saved**, that is once each was written by
    the sink or durably dead-lettered, and checkpointed. A timeout, a 5xx or a
    dropped connection means the sender must retry: delivery is at-least-once,
    so senders should put a stable id in each record and the pipeline dedupe
    on it (``riprap.stages.Dedupe(key="id", ...)``).

    Answers: 400 for a body that is not a JSON object or array; 401 for a
    missing or wrong signature (when ``secret`` is set); 413 for a body over
    ``max_body_bytes`` or with more records than ``max_pending``; 429 with
    ``Retry-After`` when accepting the request would put more than
    ``max_pending`` records between arrival and checkpoint (nothing is
    buffered beyond that); 503 with ``Retry-After`` when the source is
    stopping or the checkpoint did not come within ``ack_timeout`` (the
    records may still be processed: retry with the same ids).

    The source never ends by itself; stopping the pipeline answers 503 to the
    requests still waiting. Records buffered but not yet read when the run
    stops are not processed (their senders got 503), so nothing is lost.

    Args:
        name: The source's step name.
        host: Interface to bind; loopback unless you mean to expose it.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        path: The URL path that accepts POSTs.
        partition: The name of the single partition.
        max_body_bytes: Largest accepted body.
        secret: When set, requests must carry ``X-Riprap-Signature``: the hex
            HMAC-SHA256 of the body with this key.
        max_pending: Most records accepted and not yet checkpointed; size it to
            cover a checkpoint interval of traffic.
        retry_after: Seconds suggested in ``Retry-After`` of 429 and 503 answers.
        ack_timeout: Seconds a request waits for its checkpoint before a 503.

    Raises:
        ConfigError: For a bad number or a path not starting with ``/``.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_available",
        "_buffer",
        "_closing",
        "_committed",
        "_next",
        "_read_position",
        "_runner",
        "_secret",
        "_waiting",
        "ack_timeout",
        "host",
        "max_body_bytes",
        "max_pending",
        "name",
        "partition",
        "path",
        "requested_port",
        "retry_after",
    )

    def __init__(
        self,
        *,
        name: str = "webhook",
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/ingest",
        partition: str = "webhook",
        max_body_bytes: int = 1 << 20,
        secret: str | bytes | None = None,
        max_pending: int = 10_000,
        retry_after: float = 1.0,
        ack_timeout: float = 30.0,
    ) -> None:
        for option, number in (("max_body_bytes", max_body_bytes), ("max_pending", max_pending)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ConfigError(
                    f"WebhookSource.{option}", f"must be a positive integer, got {number!r}"
                )
        for option, seconds in (("retry_after", retry_after), ("ack_timeout", ack_timeout)):
            check_positive(f"WebhookSource.{option}", seconds)
        if not path.startswith("/"):
            raise ConfigError("WebhookSource.path", f"must start with '/', got {path!r}")
        self.name = name
        self.host = host
        self.requested_port = port
        self.path = path
        self.partition = partition
        self.max_body_bytes = max_body_bytes
        self.max_pending = max_pending
        self.retry_after = retry_after
        self.ack_timeout = ack_timeout
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._buffer: deque[Any] = deque()
        self._waiting: deque[_Pending] = deque()
        self._available: anyio.Event | None = None
        self._next = 0  # position of the next record to arrive
        self._read_position = 0  # position of the next record to hand to the pipeline
        self._committed = 0  # checkpointed position
        self._closing = False
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound TCP port.

        Raises:
            RuntimeError: The source is not open.
        """
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError(f"source {self.name!r} is not open")
        return int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        """The URL senders POST to."""
        return f"http://{self.host}:{self.port}{self.path}"

    async def open(self, context: SourceContext) -> None:
        """Continue numbering after the checkpointed position and start serving."""
        position = context.positions.get(self.partition, 0)
        self._next = self._read_position = self._committed = position
        self._closing = False
        self._available = anyio.Event()
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.requested_port).start()
        except OSError as exc:
            await runner.cleanup()
            raise bind_error("WebhookSource", self.host, self.requested_port, exc) from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def read(self, max_records: int) -> SourceBatch | None:
        """Wait for records and hand over up to ``max_records`` of them (never ``None``)."""
        while not self._buffer:
            assert self._available is not None, "read() before open()"
            await self._available.wait()
        await anyio.lowlevel.checkpoint()
        buffer = self._buffer
        count = min(max_records, len(buffer))
        values = [buffer.popleft() for _ in range(count)]
        if not buffer:
            self._available = anyio.Event()
        start = self._read_position
        self._read_position += count
        return SourceBatch(self.partition, values, start=start)

    async def committed(self, positions: Mapping[str, int]) -> None:
        """Answer 200 to every request whose records the saved checkpoint covers."""
        await anyio.lowlevel.checkpoint()
        position = positions.get(self.partition)
        if position is None:
            return
        self._committed = max(self._committed, position)
        waiting = self._waiting
        while waiting and waiting[0].end <= position:
            pending = waiting.popleft()
            pending.ok = True
            pending.event.set()

    def lag(self) -> dict[str, int]:
        """Records received and not yet handed to the pipeline."""
        return {self.partition: len(self._buffer)}

    async def aclose(self) -> None:
        """Answer 503 to every request still waiting, then stop the server."""
        self._closing = True
        while self._waiting:
            self._waiting.popleft().event.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        else:
            await anyio.lowlevel.checkpoint()

    # -- the request handler ---------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if self._closing:
            return _answer(503, {"error": "stopping"}, self.retry_after)
        size = request.content_length
        if size is not None and size > self.max_body_bytes:
            return self._too_large()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        if not self._signed(request, body):
            return _answer(401, {"error": f"missing or wrong {SIGNATURE_HEADER}"})
        values = _records(body)
        if values is None:
            return _answer(400, {"error": "body must be a JSON object or array"})
        return await self._accept(values)

    async def _accept(self, values: list[Any]) -> web.Response:
        count = len(values)
        if count > self.max_pending:
            return _answer(413, {"error": f"more than {self.max_pending} records in one request"})
        if self._closing:
            return _answer(503, {"error": "stopping"}, self.retry_after)
        if count == 0:
            return _answer(200, {"accepted": 0})
        if self._next - self._committed + count > self.max_pending:
            return _answer(429, {"error": "pipeline is full"}, self.retry_after)
        # No await from here to the append: positions and the buffer stay in step.
        first = self._next
        self._next += count
        self._buffer.extend(values)
        if self._available is not None:
            self._available.set()
        pending = _Pending(self._next)
        self._waiting.append(pending)
        with anyio.move_on_after(self.ack_timeout):
            await pending.event.wait()
        if not pending.ok:
            return _answer(503, {"error": "not checkpointed yet; retry"}, self.retry_after)
        return _answer(200, {"accepted": count, "first": first, "last": pending.end - 1})

    def _too_large(self) -> web.Response:
        return _answer(413, {"error": f"body over {self.max_body_bytes} bytes"})

    def _signed(self, request: web.Request, body: bytes) -> bool:
        if self._secret is None:
            return True
        given = request.headers.get(SIGNATURE_HEADER, "").removeprefix("sha256=")
        expected = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(given.lower(), expected)


def _records(body: bytes) -> list[Any] | None:
    """The records of a body: an object is one, an array its elements; ``None`` if neither."""
    try:
        data = parse_json_line(body)  # exact: integers beyond 64 bits stay integers
    except DecodeError:
        return None
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return data
    return None
