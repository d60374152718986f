"""An HTTP call as a step function: ``.map("enrich", HttpEnricher(...), retry=...)``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal, final

from riprap import ConfigError, DataError, DecodeError, SystemClock
from riprap.connectors.json_codec import encode_json, parse_json_line
from riprap.observability import redact_url

from ._client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    Slots,
    check_count,
    check_positive,
    check_url,
    create_session,
    send,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    import aiohttp

    from riprap import Clock

Decode = Literal["json", "bytes", "text"]
"""How a response body becomes the step's data: parsed JSON, raw bytes or UTF-8 text."""


def _replace(value: Any, data: Any) -> Any:
    """The default merge: the response replaces the value."""
    return data


@final
class HttpEnricher:
    """Calls an HTTP service once per value; an async step function with policies.

    Use it with :meth:`~riprap.Pipeline.map` and the step's resilience options::

        scores = HttpEnricher(lambda order: f"http://scores/v1/{order['id']}", merge=add_score)
        pipeline = pipeline.map("score", scores, concurrency=64, retry=Retry(...), breaker=...)
        async with scores:  # closes the HTTP session when the run ends
            await pipeline.run()

    The aiohttp session is created on the first call, inside the running event
    loop, and lives until :meth:`aclose` (or the end of an ``async with``
    block); after that the next call opens a new one, so one enricher serves
    one run at a time. 408, 429 and 5xx raise
    :class:`~riprap.connectors.http.HttpTransientError` (with ``retry_after``
    from ``Retry-After``, which the retry policy waits out in full, or gives
    up on at once when it ends past the retry deadline); other 4xx raise
    :class:`~riprap.connectors.http.HttpDataError`
    (reason ``http_<status>``, dead-lettered); a connection error or a timeout
    is transient; a body that does not decode is a :class:`~riprap.DecodeError`,
    and one over ``max_response_bytes`` a :class:`~riprap.DataError` (reason
    ``response_too_large``; reading stops there).

    Calls beyond ``limit`` (or ``limit_per_host``) wait for a connection in
    front of the pool, and a call asks the step's circuit breaker again once it
    has one (:func:`riprap.policies.admit_nowait`): calls queued while the breaker
    opened never reach the service.

    Args:
        url: The URL, or a function of the value that returns it.
        method: ``"GET"`` or ``"POST"`` (POST sends ``body(value)`` as JSON).
        timeout: Seconds one request may take, connect and body included.
        limit: Connections of the session's pool (``TCPConnector(limit=...)``).
        limit_per_host: Connections per host (0: no separate limit).
        headers: Headers sent with every request.
        decode: How to read a 2xx body: ``"json"``, ``"bytes"`` or ``"text"``.
        merge: ``merge(value, data)`` builds the step's result; by default the
            decoded response replaces the value.
        body: For POST, ``body(value)`` gives the JSON payload (default: the value).
        clock: Wall time for ``Retry-After`` HTTP dates (default: the system clock).
        max_response_bytes: The longest response body read, once
            decompressed: ``concurrency`` calls may each hold one.

    Raises:
        ConfigError: For an unknown method or decode mode or a bad number.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``max_response_bytes``: a body is no longer read whatever its size.
    """

    __slots__ = (
        "_body",
        "_clock",
        "_decode",
        "_headers",
        "_limit",
        "_limit_per_host",
        "_loop",
        "_max_bytes",
        "_merge",
        "_method",
        "_session",
        "_slots",
        "_timeout",
        "_url",
    )

    def __init__(
        self,
        url: str | Callable[[Any], str],
        *,
        method: Literal["GET", "POST"] = "GET",
        timeout: float = 10.0,
        limit: int = 100,
        limit_per_host: int = 0,
        headers: Mapping[str, str] | None = None,
        decode: Decode = "json",
        merge: Callable[[Any, Any], Any] | None = None,
        body: Callable[[Any], Any] | None = None,
        clock: Clock | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if method not in ("GET", "POST"):
            raise ConfigError("HttpEnricher.method", f"must be 'GET' or 'POST', got {method!r}")
        if decode not in ("json", "bytes", "text"):
            raise ConfigError(
                "HttpEnricher.decode", f"must be 'json', 'bytes' or 'text', got {decode!r}"
            )
        if isinstance(url, str):  # a function's URLs are checked per call (a data error)
            check_url("HttpEnricher.url", url)
        elif not callable(url):
            raise ConfigError("HttpEnricher.url", f"must be a str or a function, got {url!r}")
        check_positive("HttpEnricher.timeout", timeout)
        check_positive("HttpEnricher.limit", limit, zero=True)
        check_positive("HttpEnricher.limit_per_host", limit_per_host, zero=True)
        check_count("HttpEnricher.max_response_bytes", max_response_bytes)
        self._max_bytes = max_response_bytes
        self._url = url
        self._method = method
        self._timeout = timeout
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._headers = dict(headers or {})
        self._decode = decode
        self._merge = merge or _replace
        self._body = body
        self._clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._slots: Slots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The open session, ``None`` before the first call and after :meth:`aclose`."""
        return self._session

    async def __call__(self, value: Any) -> Any:
        """Call the service for ``value`` and return ``merge(value, data)``.

        Raises:
            HttpTransientError: 408, 429, 5xx, a connection error or a timeout.
            HttpDataError: Any other status outside 2xx.
            DecodeError: A 2xx body that is not valid JSON (or UTF-8 text).
        """
        url = self._url(value) if callable(self._url) else self._url
        data: bytes | None = None
        headers: dict[str, str] | None = None
        if self._method == "POST":
            payload = value if self._body is None else self._body(value)
            data = encode_json(payload)  # a NaN is a DataError, not a silent null
            headers = {"Content-Type": "application/json"}
        session = self._open_session()
        assert self._slots is not None
        async with self._slots.slot(url):
            raw = await send(
                session,
                self._method,
                url,
                clock=self._clock,
                max_bytes=self._max_bytes,
                data=data,
                headers=headers,
            )
        if raw is None:
            raise DataError(
                f"{self._method} {redact_url(url)}: the response is over max_response_bytes "
                f"({self._max_bytes}); it was not read further",
                reason="response_too_large",
            )
        return self._merge(value, self._decoded(raw, url))

    def _decoded(self, raw: bytes, url: str) -> Any:
        if self._decode == "bytes":
            return raw
        if self._decode == "json":  # exact: integers beyond 64 bits stay integers
            return parse_json_line(raw, source=redact_url(url))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"response is not valid {self._decode}: {exc}", source=redact_url(url)
            ) from None

    def _open_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = create_session(
                timeout=self._timeout,
                limit=self._limit,
                limit_per_host=self._limit_per_host,
                headers=self._headers,
            )
            self._slots = Slots(limit=self._limit, per_host=self._limit_per_host)
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "HttpEnricher: the session belongs to another event loop; "
                "close it (aclose() or `async with`) at the end of each run"
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session (if one is open); the next call opens a new one."""
        session, self._session, self._loop = self._session, None, None
        self._slots = None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> HttpEnricher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        url = (
            redact_url(self._url)
            if isinstance(self._url, str)
            else getattr(self._url, "__name__", "<fn>")
        )
        return f"HttpEnricher({self._method} {url})"
