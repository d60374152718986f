"""One HTTP exchange with classified failures, and the sessions that carry it.

A request waits for a pooled connection only in front of the pool, in a
:class:`Slots` limiter of the pool's size, and asks the circuit breaker again
(:func:`riprap.policies.admit_nowait`) once it has its slot: a request that
queued while the breaker opened is refused there, or gives its slot back and
waits for the breaker, instead of reaching the dependency. aiohttp's own pool
then never makes a request wait after the breaker's last word.
"""

from __future__ import annotations

import asyncio
import errno
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final
from urllib.parse import urlsplit

import aiohttp
import anyio

from riprap import ConfigError, DataError
from riprap.observability import Redactor, redact_url
from riprap.policies import admit, admit_nowait

from ._errors import HttpTransientError, check_status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from riprap import Clock


@final
class Slots:
    """Connection slots in front of a session's pool: ``limit`` in all, ``per_host`` per host.

    A zero limit is no limit, as for aiohttp's ``TCPConnector``. Create it in
    the event loop that uses it.
    """

    __slots__ = ("_hosts", "_per_host", "_total")

    def __init__(self, *, limit: int, per_host: int) -> None:
        self._total = asyncio.Semaphore(limit) if limit else None
        self._per_host = per_host
        self._hosts: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        """Hold a slot for a request to ``url``, admitted by the breaker once it is held.

        While the breaker keeps the call waiting, the call waits without a slot
        (a probe may need it), then queues again.

        Raises:
            CircuitOpenError: The step's breaker refuses the call now (``on_open="raise"``).
        """
        held = self._semaphores(url)
        while True:
            await _acquire(held)
            try:
                admit_nowait()
                break
            except anyio.WouldBlock:
                _release(held)
            except BaseException:
                _release(held)
                raise
            await admit()
        try:
            yield
        finally:
            _release(held)

    def _semaphores(self, url: str) -> tuple[asyncio.Semaphore, ...]:
        """The semaphores a request to ``url`` holds: its host's, then the total."""
        held: list[asyncio.Semaphore] = []
        if self._per_host:
            netloc = urlsplit(url).netloc
            host = self._hosts.get(netloc)
            if host is None:
                host = self._hosts[netloc] = asyncio.Semaphore(self._per_host)
            held.append(host)
        if self._total is not None:
            held.append(self._total)
        return tuple(held)


async def _acquire(semaphores: tuple[asyncio.Semaphore, ...]) -> None:
    """Acquire each in order; on cancellation none stays held."""
    taken: list[asyncio.Semaphore] = []
    try:
        for semaphore in semaphores:
            await semaphore.acquire()
            taken.append(semaphore)
    except BaseException:
        _release(tuple(taken))
        raise


def _release(semaphores: tuple[asyncio.Semaphore, ...]) -> None:
    for semaphore in reversed(semaphores):
        semaphore.release()


def create_session(
    *, timeout: float, limit: int, limit_per_host: int, headers: Mapping[str, str] | None
) -> aiohttp.ClientSession:
    """A session with a per-request total timeout and a bounded connection pool.

    Must be called inside the running event loop that will use it.
    """
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers=dict(headers or {}),
        raise_for_status=False,
    )


DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""The largest response body an enricher reads by default (16 MiB)."""


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    clock: Clock,
    max_bytes: int,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes | None:
    """Make one request and return the body of a 2xx response.

    The body is read up to ``max_bytes`` (once decompressed) and no further:
    ``None`` stands for a longer one.

    Raises:
        HttpTransientError: A connection error, a timeout, or 408/429/5xx.
        HttpDataError: Any other status outside 2xx.
        DataError: ``url`` is not an ``http``/``https`` URL with a host (reason
            ``invalid_url``): no retry could make it work.
    """
    # Only the redacted URL (no userinfo, no secret query values) enters a message,
    # an error's attribute or a dead letter; an aiohttp message quoting the URL too.
    shown = redact_url(url) if isinstance(url, str) else url
    problem = url_problem(url)
    if problem is not None:
        raise DataError(f"{method} {shown!r}: {problem}", reason="invalid_url")
    try:
        async with session.request(method, url, data=data, headers=headers) as response:
            body = await _bounded_body(response, max_bytes)
            status = response.status
            response_headers = response.headers
    except aiohttp.InvalidURL as exc:  # before ClientError: a bad URL is not transient
        detail = _scrub(str(exc), url, shown)
        message = f"{method} {shown!r}: invalid URL: {detail}"
        raise DataError(message, reason="invalid_url") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Timeouts of aiohttp are TimeoutErrors; cancellation is not caught. The
        # chained aiohttp error may quote the URL: tracebacks go through the redactor.
        detail = _scrub(str(exc), url, shown) or "no detail"
        raise HttpTransientError(
            f"{method} {shown} failed: {type(exc).__name__}: {detail}", url=shown
        ) from exc
    check_status(method, shown, status, response_headers, now=clock.time())
    return body


async def _bounded_body(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it is known to pass ``limit`` bytes.

    A compressed body is counted as it is decompressed: a small gzip body can
    hold gigabytes.
    """
    length = response.content_length
    if length is not None and length > limit:
        return None
    if length is not None and "Content-Encoding" not in response.headers:
        return await response.read()  # exactly ``length`` bytes
    # Past the limit the connection is closed, not reused: the rest is never read.
    return await read_at_most(response.content, limit)


async def read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """All of ``stream``, or ``None`` once it passes ``limit`` bytes.

    Not ``read()``: that also lets the stream buffer up to ``limit`` bytes
    ahead of the reader; here a body costs at most twice its size, for the
    moment of the final copy.
    """
    body = bytearray()
    async for chunk in stream.iter_any():
        if len(body) + len(chunk) > limit:
            return None
        body += chunk
    return bytes(body)


def _scrub(text: str, url: str, shown: str) -> str:
    """``text`` (an aiohttp message) with ``url``, and the parts of it aiohttp quotes, redacted."""
    text = text.replace(url, shown)
    parts = urlsplit(url)
    if parts.password:
        text = text.replace(parts.password, "[REDACTED:password]")
    return _REDACTOR.redact(text)


_REDACTOR = Redactor()


def url_problem(url: object) -> str | None:
    """What makes ``url`` unusable for an HTTP request, or ``None``."""
    if not isinstance(url, str):
        return f"a URL must be a str, got {type(url).__name__}"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return f"not an http:// or https:// URL (scheme {parts.scheme or 'missing'!r})"
    if not parts.hostname:
        return "the URL has no host"
    return None


def check_url(option: str, url: object) -> None:
    """Raise :class:`~riprap.ConfigError` naming ``option`` for an unusable URL."""
    problem = url_problem(url)
    if problem is not None:
        shown = redact_url(url) if isinstance(url, str) else url
        raise ConfigError(option, f"{shown!r}: {problem}")


def check_count(option: str, value: object) -> None:
    """Raise :class:`~riprap.ConfigError` unless ``value`` is a positive integer (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(option, f"must be a positive integer, got {value!r}")


def check_positive(option: str, value: float, *, zero: bool = False) -> None:
    """Raise :class:`~riprap.ConfigError` unless ``value`` is a positive (finite) number."""
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ConfigError(
            option, f"must be a {'non-negative' if zero else 'positive'} number, got {value!r}"
        )


def bind_error(owner: str, host: str, port: int, error: OSError) -> OSError | ConfigError:
    """The one-line :class:`~riprap.ConfigError` for a server that could not bind.

    A port in use, a privileged port or an address this machine does not have
    is a configuration mistake that names the option; any other ``OSError`` is
    returned as it is.
    """
    where = f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        return ConfigError(f"{owner}.port", f"{where} is in use")
    if error.errno == errno.EACCES:
        return ConfigError(f"{owner}.port", f"{where}: permission denied (a privileged port?)")
    if error.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"{owner}.host", f"{where}: not an address of this machine")
    return error
