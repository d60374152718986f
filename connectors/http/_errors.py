"""HTTP status classification shared by the enricher and the sink.

408, 429 and 5xx are the dependency's trouble: :class:`HttpTransientError`,
retried by the step's retry policy, which honours ``Retry-After``. Any other
status outside 2xx is about the request itself: :class:`HttpDataError` with
reason ``http_<status>``, dead-lettered without a retry. A connection error
or a timeout is transient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from riprap import DataError, TransientError
from riprap.policies import parse_retry_after

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ("HttpDataError", "HttpTransientError", "check_status", "is_transient_status")


@final
class HttpTransientError(TransientError):
    """A retryable HTTP failure: 408, 429, 5xx, a connection error or a timeout.

    Attributes:
        status: The HTTP status, ``None`` when no response arrived.
        url: The URL that was called.
        retry_after: Seconds the server asked to wait (``Retry-After``), if it said.

    .. versionadded:: 0.1
    """

    def __init__(
        self, message: str, *, url: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.url = url


@final
class HttpDataError(DataError):
    """A permanent HTTP failure (4xx other than 408/429): the record's fault.

    Its ``reason`` is ``http_<status>`` (dead letters group by it).

    Attributes:
        status: The HTTP status.
        url: The URL that was called.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, url: str, status: int) -> None:
        super().__init__(message, reason=f"http_{status}")
        self.status = status
        self.url = url


def is_transient_status(status: int) -> bool:
    """Whether ``status`` is worth retrying: 408, 429 or any 5xx."""
    return status in (408, 429) or status >= 500


def check_status(
    method: str, url: str, status: int, headers: Mapping[str, str], *, now: float
) -> None:
    """Raise the error ``status`` stands for; return quietly for 2xx.

    Args:
        method: The request method, for the message.
        url: The URL called, for the message and the error's attribute.
        status: The response status.
        headers: The response headers (``Retry-After`` is read from them).
        now: Wall-clock time, to turn a ``Retry-After`` HTTP date into seconds.

    Raises:
        HttpTransientError: For 408, 429 and 5xx, with ``retry_after`` when given.
        HttpDataError: For any other status outside 2xx.
    """
    if 200 <= status < 300:
        return
    message = f"{method} {url} answered {status}"
    if is_transient_status(status):
        header = headers.get("Retry-After")
        after = parse_retry_after(header, now=now) if header is not None else None
        raise HttpTransientError(message, url=url, status=status, retry_after=after)
    raise HttpDataError(message, url=url, status=status)
