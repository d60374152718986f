"""One HTTP exchange with classified failures, and the sessions that carry it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from riprap import ConfigError

from ._errors import HttpTransientError, check_status

if TYPE_CHECKING:
    from collections.abc import Mapping

    from riprap import Clock


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


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    clock: Clock,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """Make one request and return the body of a 2xx response.

    Raises:
        HttpTransientError: A connection error, a timeout, or 408/429/5xx.
        HttpDataError: Any other status outside 2xx.
    """
    try:
        async with session.request(method, url, data=data, headers=headers) as response:
            body = await response.read()
            status = response.status
            response_headers = response.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Timeouts of aiohttp are TimeoutErrors; cancellation is not caught.
        detail = str(exc) or "no detail"
        raise HttpTransientError(
            f"{method} {url} failed: {type(exc).__name__}: {detail}", url=url
        ) from exc
    check_status(method, url, status, response_headers, now=clock.time())
    return body


def check_positive(option: str, value: float, *, zero: bool = False) -> None:
    """Raise :class:`~riprap.ConfigError` unless ``value`` is a positive number."""
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or value < 0 or (value == 0 and not zero):
        raise ConfigError(
            option, f"must be a {'non-negative' if zero else 'positive'} number, got {value!r}"
        )
