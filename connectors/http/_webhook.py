"""A source fed by HTTP POSTs, answering 2xx only once its records are checkpointed."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
import orjson
from aiohttp import HttpVersion11, web

from riprap import ConfigError, DecodeError, SourceBatch, SystemClock
from riprap.connectors.json_codec import parse_json_line

from ._client import bind_error, check_count, check_positive, read_at_most
from ._signature import Signature, SignatureError, read_signature

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from riprap import Clock, SourceContext

_IDENTITY = ("", "identity")


@final
@dataclass(frozen=True, slots=True)
class WebhookStatistics:
    """What a :class:`~riprap.connectors.http.WebhookSource` holds at one moment.

    Attributes:
        requests: Requests in progress (reading a body or waiting for their checkpoint).
        pending_records: Records accepted and not yet checkpointed.
        pending_bytes: Body bytes reserved: bodies being read, and bodies whose
            records are not yet checkpointed.

    .. versionadded:: 0.2
    """

    requests: int
    pending_records: int
    pending_bytes: int


@final
class _Pending:
    """One admitted request: its reserved body bytes, then the wait for its checkpoint."""

    __slots__ = ("end", "event", "ok", "signature", "size")

    def __init__(self, size: int, signature: Signature | None) -> None:
        self.size = size
        self.signature = signature
        self.end = -1  # the position after its records, once they are queued
        self.event = anyio.Event()
        self.ok = False


def _answer(
    status: int, body: Mapping[str, Any], retry_after: float | None = None, *, close: bool = False
) -> web.Response:
    headers = {} if retry_after is None else {"Retry-After": str(max(1, round(retry_after)))}
    response = web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
    if close:  # the body was not read: do not keep the connection for another request
        response.force_close()
    return response


def _no_count(outcome: str, count: int) -> None:
    """Counting before :meth:`WebhookSource.open`: nothing to report to."""


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

    Memory is bounded in requests, records and bytes. A request is admitted on
    its headers alone, before any of its body is read: the ``Content-Length``
    (``max_body_bytes`` for a chunked or compressed body) is reserved against
    ``max_pending_bytes`` and stays reserved until a checkpoint covers the
    request's records. Refusals on the headers close the connection. A record
    weighs its share of its body for the pipeline's bound in bytes.

    Answers, before the body is read: 503 with ``Retry-After`` when the source
    is stopping or ``max_requests`` requests are in progress; 413 for a
    ``Content-Length`` over ``max_body_bytes``; 401 for missing, malformed or
    out-of-date signature headers (when ``secret`` is set); 429 with
    ``Retry-After`` when the body's bytes would put more than
    ``max_pending_bytes`` between arrival and checkpoint, or ``max_pending``
    records are already there. After reading it: 408 for a body not received
    within ``body_timeout``; 413 for a body over ``max_body_bytes`` or with
    more records than ``max_pending``; 401 for a signature that does not match
    the body; 400 for a body that is not a JSON object or array; 429 when its
    records do not fit within ``max_pending``; 503 when the checkpoint did not
    come within ``ack_timeout`` (the records may still be processed: retry
    with the same ids). Every refusal is counted as a source outcome
    (``requests_full``, ``requests_unauthorized``...: the run report and
    ``riprap_source_outcomes``).

    Signatures (with ``secret``): the sender sends ``X-Riprap-Timestamp: <Unix
    seconds>`` and ``X-Riprap-Signature: v1=<hex HMAC-SHA256 of
    "<timestamp>.<body>">`` (:func:`~riprap.connectors.http.sign_webhook`
    builds both); a timestamp more than ``signature_tolerance`` seconds from
    the source's clock is refused, so a captured request cannot be replayed
    later.

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
        secret: When set, requests must carry valid signature headers (see above).
        signature_tolerance: Seconds a signature's timestamp may be away from now.
        max_pending: Most records accepted and not yet checkpointed; size it to
            cover a checkpoint interval of traffic.
        max_pending_bytes: Most body bytes reserved at once: bodies being read
            and bodies of records not yet checkpointed. Decoded records take
            more memory than their JSON: a typical 1 KiB event 3 to 4 times
            as much, a tiny record about 6 times.
        max_requests: Most requests in progress at once, those waiting for
            their checkpoint included; size it to cover a checkpoint interval
            of requests.
        body_timeout: Seconds a sender has to deliver an admitted body.
        retry_after: Seconds suggested in ``Retry-After`` of 429 and 503 answers.
        ack_timeout: Seconds a request waits for its checkpoint before a 503.
        clock: Wall time for signature timestamps (default: the pipeline's clock).

    Raises:
        ConfigError: For a bad number, a ``max_pending_bytes`` below
            ``max_body_bytes``, or a path not starting with ``/``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       Signatures cover a timestamp (``v1=``); a body-only signature is
       refused. Added ``max_pending_bytes``, ``max_requests``,
       ``body_timeout``, ``signature_tolerance`` and ``clock``.
    """

    __slots__ = (
        "_available",
        "_buffer",
        "_clock",
        "_closing",
        "_committed",
        "_count",
        "_max_batch_bytes",
        "_next",
        "_pending_bytes",
        "_read_position",
        "_requests",
        "_runner",
        "_secret",
        "_waiting",
        "_weights",
        "ack_timeout",
        "body_timeout",
        "clock",
        "host",
        "max_body_bytes",
        "max_pending",
        "max_pending_bytes",
        "max_requests",
        "name",
        "partition",
        "path",
        "requested_port",
        "retry_after",
        "signature_tolerance",
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
        signature_tolerance: float = 300.0,
        max_pending: int = 10_000,
        max_pending_bytes: int = 32 << 20,
        max_requests: int = 1024,
        body_timeout: float = 30.0,
        retry_after: float = 1.0,
        ack_timeout: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        _check_counts(
            max_body_bytes=max_body_bytes,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
            max_requests=max_requests,
        )
        for option, seconds in (
            ("signature_tolerance", signature_tolerance),
            ("body_timeout", body_timeout),
            ("retry_after", retry_after),
            ("ack_timeout", ack_timeout),
        ):
            check_positive(f"WebhookSource.{option}", seconds)
        if not path.startswith("/"):
            raise ConfigError("WebhookSource.path", f"must start with '/', got {path!r}")
        self.name = name
        self.host = host
        self.requested_port = port
        self.path = path
        self.partition = partition
        self.max_body_bytes = max_body_bytes
        self.signature_tolerance = signature_tolerance
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_requests = max_requests
        self.body_timeout = body_timeout
        self.retry_after = retry_after
        self.ack_timeout = ack_timeout
        self.clock = clock
        self._clock: Clock = clock or SystemClock()
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._buffer: deque[Any] = deque()
        self._weights: deque[int] = deque()  # each buffered record's share of its body
        self._max_batch_bytes: int | None = None
        self._waiting: deque[_Pending] = deque()
        self._available: anyio.Event | None = None
        self._next = 0  # position of the next record to arrive
        self._read_position = 0  # position of the next record to hand to the pipeline
        self._committed = 0  # checkpointed position
        self._pending_bytes = 0  # reserved by admitted requests until their checkpoint
        self._requests = 0  # requests in progress
        self._closing = False
        self._count: Callable[[str, int], None] = _no_count
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

    def statistics(self) -> WebhookStatistics:
        """Requests in progress, and records and body bytes not yet checkpointed."""
        return WebhookStatistics(self._requests, self._next - self._committed, self._pending_bytes)

    async def open(self, context: SourceContext) -> None:
        """Continue numbering after the checkpointed position and start serving."""
        position = context.positions.get(self.partition, 0)
        self._next = self._read_position = self._committed = position
        self._buffer.clear()
        self._weights.clear()
        self._max_batch_bytes = context.max_batch_bytes
        self._closing = False
        self._available = anyio.Event()
        self._clock = self.clock or context.clock or SystemClock()
        self._count = context.count
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post(self.path, self._handle, expect_handler=self._expect)
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
        buffer, weights, limit = self._buffer, self._weights, self._max_batch_bytes
        values: list[Any] = []
        nbytes = 0
        # Up to max_records, or to the record that reaches the byte limit.
        while buffer and len(values) < max_records and (limit is None or nbytes < limit):
            values.append(buffer.popleft())
            nbytes += weights.popleft()
        if not buffer:
            self._available = anyio.Event()
        start = self._read_position
        self._read_position += len(values)
        return SourceBatch(self.partition, values, start=start, nbytes=nbytes)

    async def committed(self, positions: Mapping[str, int]) -> None:
        """Answer 200 to every request whose records the saved checkpoint covers.

        Their reserved body bytes are released here, and only here (or when
        the source closes): until the checkpoint, their records are in memory.
        """
        await anyio.lowlevel.checkpoint()
        position = positions.get(self.partition)
        if position is None:
            return
        self._committed = max(self._committed, position)
        waiting = self._waiting
        while waiting and waiting[0].end <= position:
            pending = waiting.popleft()
            self._release(pending)
            pending.ok = True
            pending.event.set()

    def lag(self) -> dict[str, int]:
        """Records received and not yet handed to the pipeline."""
        return {self.partition: len(self._buffer)}

    async def aclose(self) -> None:
        """Answer 503 to every request still waiting, then stop the server."""
        self._closing = True
        while self._waiting:
            pending = self._waiting.popleft()
            self._release(pending)
            pending.event.set()
        self._buffer.clear()
        self._weights.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        else:
            await anyio.lowlevel.checkpoint()

    # -- admission, on the headers alone ---------------------------------------

    def _admit(self, request: web.BaseRequest) -> _Pending | web.Response:
        """Reserve room for a request from its headers, or refuse it (nothing of it is read).

        No await: the checks and the reservation are one step under asyncio.
        """
        if self._closing:
            return self._refuse("requests_stopping", 503, "stopping", retry=True)
        if self._requests >= self.max_requests:
            return self._refuse("requests_busy", 503, "too many requests in progress", retry=True)
        size = request.content_length
        if size is not None and size > self.max_body_bytes:
            return self._too_large(close=True)
        signature = None
        if self._secret is not None:
            try:
                signature = read_signature(
                    request.headers, now=self._clock.time(), tolerance=self.signature_tolerance
                )
            except SignatureError as exc:
                return self._refuse("requests_unauthorized", 401, str(exc))
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        # A chunked body's size is unknown, a compressed one's is its inflated size.
        reserve = size if size is not None and encoding in _IDENTITY else self.max_body_bytes
        if (
            self._pending_bytes + reserve > self.max_pending_bytes
            or self._next - self._committed >= self.max_pending
        ):
            return self._refuse("requests_full", 429, "pipeline is full", retry=True)
        self._pending_bytes += reserve
        return _Pending(reserve, signature)

    def _release(self, pending: _Pending) -> None:
        """Give a request's reserved bytes back (once)."""
        self._pending_bytes -= pending.size
        pending.size = 0

    def _refuse(
        self, outcome: str, status: int, error: str, *, retry: bool = False, close: bool = True
    ) -> web.Response:
        """Count a refused request by ``outcome`` and answer it."""
        self._count(outcome, 1)
        return _answer(status, {"error": error}, self.retry_after if retry else None, close=close)

    def _too_large(self, *, close: bool) -> web.Response:
        error = f"body over {self.max_body_bytes} bytes"
        return self._refuse("requests_too_large", 413, error, close=close)

    async def _expect(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: refuse on the headers, so the sender never sends the body."""
        admitted = self._admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        self._release(admitted)  # the handler admits the request again
        if request.version != HttpVersion11 or (
            request.headers.get("Expect", "").lower() != "100-continue"
        ):
            return _answer(417, {"error": "only 'Expect: 100-continue' is understood"}, close=True)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response
        return None

    # -- the request handler ---------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        admitted = self._admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        self._requests += 1
        try:
            return await self._handle_admitted(request, admitted)
        finally:
            self._requests -= 1
            if admitted.end < 0:  # its records were not queued: nothing holds the bytes
                self._release(admitted)

    async def _handle_admitted(self, request: web.Request, pending: _Pending) -> web.Response:
        body = await self._read_body(request, pending)
        if isinstance(body, web.Response):
            return body
        signature, secret = pending.signature, self._secret
        if signature is not None and secret is not None and not signature.matches(secret, body):
            error = "signature does not match"
            return self._refuse("requests_unauthorized", 401, error, close=False)
        values = _records(body)
        del body
        if values is None:
            error = "body must be a JSON object or array"
            return self._refuse("requests_malformed", 400, error, close=False)
        return await self._accept(values, pending)

    async def _read_body(self, request: web.Request, pending: _Pending) -> bytes | web.Response:
        """The body, read within ``body_timeout`` and ``max_body_bytes``, or the refusal."""
        with anyio.move_on_after(self.body_timeout):
            body = await read_at_most(request.content, self.max_body_bytes)
            if body is None:
                return self._too_large(close=True)
            # Shrink the reservation to the body (a chunked one reserved max_body_bytes).
            self._pending_bytes -= pending.size - len(body)
            pending.size = len(body)
            return body
        error = f"body not received within {self.body_timeout:g} s"
        return self._refuse("requests_body_timeout", 408, error)

    async def _accept(self, values: list[Any], pending: _Pending) -> web.Response:
        count = len(values)
        if count > self.max_pending:
            error = f"more than {self.max_pending} records in one request"
            return self._refuse("requests_too_large", 413, error, close=False)
        if self._closing:
            return self._refuse("requests_stopping", 503, "stopping", retry=True, close=False)
        if count == 0:
            return _answer(200, {"accepted": 0})
        if self._next - self._committed + count > self.max_pending:
            return self._refuse("requests_full", 429, "pipeline is full", retry=True, close=False)
        # No await from here to the append: positions and the buffer stay in step.
        first = self._next
        self._next += count
        self._buffer.extend(values)
        each, rest = divmod(pending.size, count)  # a record weighs its share of the body
        self._weights.extend([each + 1] * count)
        self._weights[-count] += rest
        if self._available is not None:
            self._available.set()
        pending.end = self._next  # from now on the checkpoint releases its bytes
        self._waiting.append(pending)
        with anyio.move_on_after(self.ack_timeout):
            await pending.event.wait()
        if not pending.ok:
            error = "not checkpointed yet; retry"
            return self._refuse("requests_unconfirmed", 503, error, retry=True, close=False)
        return _answer(200, {"accepted": count, "first": first, "last": pending.end - 1})


def _check_counts(**counts: int) -> None:
    """Raise :class:`~riprap.ConfigError` for a count that is not a positive integer."""
    for option, number in counts.items():
        check_count(f"WebhookSource.{option}", number)
    if counts["max_pending_bytes"] < counts["max_body_bytes"]:
        raise ConfigError(
            "WebhookSource.max_pending_bytes",
            f"must be at least max_body_bytes ({counts['max_body_bytes']}), "
            f"got {counts['max_pending_bytes']}",
        )


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
