"""Error classification: is an exception worth retrying, the record's fault, or a bug?

``"transient"`` errors are retried and count as failures of the dependency;
``"permanent"`` ones are the record's fault (dead-letter it, do not retry, the
dependency is fine); anything else is a ``"bug"`` that stops the pipeline.

Built-in rules know riprap's own errors, the builtin network errors, aiohttp
and botocore. The optional libraries are never imported here: an exception
can only be an aiohttp or botocore exception if that library is already in
``sys.modules``, so the rules look there and skip the library otherwise.
"""

from __future__ import annotations

import errno
import math
import sys
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Literal, final

from riprap._core.errors import BulkheadFullError, CircuitOpenError, DataError, TransientError

Verdict = Literal["transient", "permanent", "bug"]
"""The classes of error the engine routes differently."""

ClassifierHook = Callable[[BaseException], "Verdict | None"]
"""A user rule: returns a verdict, or ``None`` to let the next rule decide."""

_VERDICTS: frozenset[str] = frozenset(("transient", "permanent", "bug"))

_NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EPIPE",
        "EAGAIN",
    )
    if hasattr(errno, name)
)

# botocore's standard retry mode treats these error codes as throttling or
# transient (botocore/retries/standard.py); copied so botocore stays optional.
_BOTO_RETRYABLE_CODES = frozenset(
    (
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
    )
)


def _http_status_verdict(status: int) -> Verdict:
    if status in (408, 429) or status >= 500:
        return "transient"
    return "permanent"


def _aiohttp_verdict(exc: BaseException) -> Verdict | None:
    aiohttp: Any = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    if isinstance(exc, aiohttp.ClientResponseError):
        return _http_status_verdict(exc.status)
    # A truncated body is the connection's fault, like a reset.
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return "transient"
    return None


def _botocore_verdict(exc: BaseException) -> Verdict | None:
    boto: Any = sys.modules.get("botocore.exceptions")
    if boto is None:
        return None
    if isinstance(exc, boto.ClientError):
        response = exc.response or {}
        code = response.get("Error", {}).get("Code")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _BOTO_RETRYABLE_CODES:
            return "transient"
        if isinstance(status, int) and (status == 429 or status >= 500):
            return "transient"
        return "permanent"
    # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError...
    if isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
        return "transient"
    return None


def _builtin_verdict(exc: BaseException) -> Verdict:
    if isinstance(exc, TransientError | TimeoutError | CircuitOpenError | BulkheadFullError):
        return "transient"
    if isinstance(exc, DataError):
        return "permanent"
    verdict = _aiohttp_verdict(exc) or _botocore_verdict(exc)
    if verdict is not None:
        return verdict
    if isinstance(exc, ConnectionError):
        return "transient"
    if isinstance(exc, OSError) and (
        exc.errno in _NETWORK_ERRNOS or type(exc).__module__ == "socket"  # gaierror, herror
    ):
        return "transient"
    return "bug"


@final
class Classifier:
    """Decides the :data:`Verdict` of an exception; extensible by type or by hook.

    Rules are consulted in order: hooks (most recently added first), then
    registered types (the most specific class in the exception's MRO wins),
    then the built-in rules. ``copy()`` gives an independent classifier to
    extend without touching the shared default.

    .. versionadded:: 0.1
    """

    __slots__ = ("_hooks", "_types")

    def __init__(self) -> None:
        self._types: dict[type, Verdict] = {}
        self._hooks: list[ClassifierHook] = []

    def register(self, exc_type: type[BaseException], verdict: Verdict) -> None:
        """Classify ``exc_type`` and its subclasses as ``verdict``.

        Raises:
            ValueError: If ``verdict`` is not one of the three verdicts.
        """
        if verdict not in _VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; use one of {sorted(_VERDICTS)}")
        self._types[exc_type] = verdict

    def add_hook(self, hook: ClassifierHook) -> None:
        """Consult ``hook`` before every other rule; it returns ``None`` to pass."""
        self._hooks.insert(0, hook)

    def copy(self) -> Classifier:
        """An independent classifier with the same registrations and hooks."""
        clone = Classifier()
        clone._types.update(self._types)
        clone._hooks.extend(self._hooks)
        return clone

    def classify(self, exc: BaseException) -> Verdict:
        """The verdict for ``exc``.

        :class:`~riprap.policies.CircuitOpenError` and :class:`~riprap.policies.BulkheadFullError`
        are ``"transient"`` (the dependency's state, not the record's) even
        though no policy retries them. Cancellation is not an error and the
        policies never ask about it; a bare ``BaseException`` gets ``"bug"``.
        """
        for hook in self._hooks:
            verdict = hook(exc)
            if verdict is not None:
                return verdict
        if self._types:
            for cls in type(exc).__mro__:
                registered = self._types.get(cls)
                if registered is not None:
                    return registered
        return _builtin_verdict(exc)

    __call__ = classify


def retry_after(exc: BaseException, *, now: float) -> float | None:
    """How long ``exc`` asks the caller to wait before retrying, in seconds, if it says.

    Reads a numeric ``retry_after`` attribute (:class:`~riprap.TransientError`
    and similar) or the ``Retry-After`` header of an aiohttp
    ``ClientResponseError`` (delta-seconds or an HTTP date, compared with the
    wall-clock time ``now``).
    """
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and math.isfinite(value):
        return max(0.0, float(value))
    aiohttp: Any = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientResponseError) and exc.headers:
        header = exc.headers.get("Retry-After")
        if isinstance(header, str):
            return parse_retry_after(header, now=now)
    return None


def parse_retry_after(value: str, *, now: float) -> float | None:
    """Parse a ``Retry-After`` header value: delta-seconds or an HTTP date; ``None`` if invalid."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 9110 dates are GMT anyway
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


DEFAULT_CLASSIFIER = Classifier()
"""The classifier every policy uses unless given another; extend it with ``register``."""


def classify(exc: BaseException) -> Verdict:
    """Classify ``exc`` with :data:`DEFAULT_CLASSIFIER`.

    .. versionadded:: 0.1
    """
    return DEFAULT_CLASSIFIER.classify(exc)
