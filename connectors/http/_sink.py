"""POST records to an HTTP endpoint, each request with a stable ``Idempotency-Key``."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, final

import anyio
import anyio.lowlevel

from riprap import SystemClock
from riprap.connectors.json_codec import encode_json
from riprap.observability import redact_url

from ._client import Slots, check_count, check_positive, check_url, create_session, send
from ._errors import HttpDataError, HttpTransientError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import aiohttp

    from riprap import Batch, Clock

_JSON = {"Content-Type": "application/json"}
_ANSWER_BYTES = 64 * 1024
"""Bytes of a write's answer read (so that its connection is reused); the rest is not."""


@final
class HttpSink:
    """Writes each record (or each group of ``batch_size`` records) as a JSON POST.

    Every request carries an ``Idempotency-Key`` built from the source
    position of its records: ``<pipeline>:<partition>:<offset>`` for one
    record, ``<pipeline>:<partition>:<first>-<last>`` for a group. A retried
    write repeats the same keys, so a server that honours them applies each
    request once; declare that with ``idempotent=True`` (exactly-once effect
    across retries and, with ``batch_size=None``, across restarts: a replay
    after a restart may group records differently, so group keys can differ).

    A write returns when every request got a 2xx. 408, 429, 5xx, connection
    errors and timeouts raise :class:`~riprap.connectors.http.HttpTransientError`
    (the engine's sink retry retries the write and honours ``Retry-After``);
    any other status raises :class:`~riprap.connectors.http.HttpDataError`
    (reason ``http_<status>``): the engine then writes the batch's records one
    at a time and dead-letters the rejected ones. A request beyond ``limit``
    waits for a connection in front of the pool and asks the sink's circuit
    breaker again once it has one (:func:`riprap.policies.admit_nowait`).

    Args:
        url: The endpoint.
        name: The sink's step name.
        pipeline: First part of every idempotency key; use the pipeline's name
            (default: the sink's name).
        batch_size: ``None`` posts one JSON value per record; ``N`` posts JSON
            arrays of up to ``N`` records.
        concurrency: Requests of one write in flight at once.
        timeout: Seconds one request may take.
        headers: Headers sent with every request.
        limit: Connections of the session's pool.
        idempotent: Whether the server honours ``Idempotency-Key`` (replays are
            harmless); ``False`` by default, as riprap cannot know.
        clock: Wall time for ``Retry-After`` HTTP dates (default: the system clock).

    Raises:
        ConfigError: For a bad ``batch_size``, ``concurrency`` or timeout.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_clock",
        "_concurrency",
        "_headers",
        "_limit",
        "_prefix",
        "_session",
        "_slots",
        "_timeout",
        "_url",
        "batch_size",
        "idempotent",
        "name",
    )

    def __init__(
        self,
        url: str,
        *,
        name: str = "http",
        pipeline: str | None = None,
        batch_size: int | None = None,
        concurrency: int = 1,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        limit: int = 100,
        idempotent: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if batch_size is not None:
            check_count("HttpSink.batch_size", batch_size)
        check_count("HttpSink.concurrency", concurrency)
        check_url("HttpSink.url", url)
        check_positive("HttpSink.timeout", timeout)
        check_positive("HttpSink.limit", limit, zero=True)
        self._url = url
        self.name = name
        self.batch_size = batch_size
        self.idempotent = idempotent
        self._prefix = pipeline or name
        self._concurrency = concurrency
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._limit = limit
        self._clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._slots: Slots | None = None

    @property
    def url(self) -> str:
        """The endpoint, with userinfo and secret query values redacted (requests use it whole)."""
        return redact_url(self._url)

    async def open(self) -> None:
        """Open the HTTP session (inside the run's event loop)."""
        await anyio.lowlevel.checkpoint()
        if self._session is None:
            self._session = create_session(
                timeout=self._timeout, limit=self._limit, limit_per_host=0, headers=self._headers
            )
            self._slots = Slots(limit=self._limit, per_host=0)

    async def write(self, batch: Batch) -> None:
        """POST the batch's records; return when every request got a 2xx.

        Raises:
            HttpDataError: A request was refused (any 4xx but 408/429, ...).
            DataError: A record cannot be written as JSON exactly (a NaN, an
                infinity: reason ``non_finite_number``); nothing is sent for it.
            HttpTransientError: A request failed transiently (408, 429, 5xx, network).
            RuntimeError: The sink is not open.
        """
        requests = self._requests(batch)
        if self._concurrency == 1 or len(requests) == 1:
            for body, key in requests:
                await self._post(body, key)
            return
        errors: list[HttpDataError | HttpTransientError] = []
        limiter = anyio.CapacityLimiter(self._concurrency)

        async def post(body: bytes, key: str) -> None:
            async with limiter:
                try:
                    await self._post(body, key)
                except (HttpDataError, HttpTransientError) as exc:
                    errors.append(exc)

        async with anyio.create_task_group() as tg:
            for body, key in requests:
                tg.start_soon(post, body, key)
        if errors:
            # A refused request first: the engine then isolates the bad records.
            refused = [e for e in errors if isinstance(e, HttpDataError)]
            raise (refused or errors)[0]

    def _requests(self, batch: Batch) -> list[tuple[bytes, str]]:
        """``(body, idempotency key)`` of every request the batch becomes."""
        items = batch.items
        if self.batch_size is None:
            return [self._request(batch, i, i, encode_json(item)) for i, item in enumerate(items)]
        size = self.batch_size
        return [
            self._request(batch, i, min(i + size, len(items)) - 1, encode_json(items[i : i + size]))
            for i in range(0, len(items), size)
        ]

    def _request(self, batch: Batch, first: int, last: int, body: bytes) -> tuple[bytes, str]:
        partition, offset = batch.position(first)
        if partition is None:
            # Without a source position the content is the only stable identity.
            return body, f"{self._prefix}:sha256:{hashlib.sha256(body).hexdigest()}"
        if first == last:
            return body, f"{self._prefix}:{partition}:{offset}"
        last_partition, last_offset = batch.position(last)
        if last_partition == partition:
            return body, f"{self._prefix}:{partition}:{offset}-{last_offset}"
        return body, f"{self._prefix}:{partition}:{offset}-{last_partition}:{last_offset}"

    async def _post(self, body: bytes, key: str) -> None:
        if self._session is None or self._slots is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        headers = {**_JSON, "Idempotency-Key": key}
        async with self._slots.slot(self._url):
            await send(  # the answer's body is not used: a long one is not read
                self._session,
                "POST",
                self._url,
                clock=self._clock,
                max_bytes=_ANSWER_BYTES,
                data=body,
                headers=headers,
            )

    async def flush(self) -> None:
        """Nothing is buffered: every write is complete when it returns."""
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the HTTP session."""
        session, self._session, self._slots = self._session, None, None
        if session is not None:
            await session.close()

    def __repr__(self) -> str:
        return f"HttpSink({self.name!r}, {self.url!r})"
