"""The error classifier: transient, permanent or bug, with built-in and user rules."""

from __future__ import annotations

import errno
import socket
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from riprap import DataError, DecodeError, TransientError
from riprap.policies import (
    BulkheadFullError,
    CircuitOpenError,
    Classifier,
    StageTimeout,
    Verdict,
    classify,
    parse_retry_after,
    retry_after,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def response_error(
    status: int, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponseError:
    """A real aiohttp ClientResponseError as raise_for_status() builds it."""
    url = URL("http://example.invalid/items")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(
        info,
        (),
        status=status,
        message="boom",
        headers=CIMultiDictProxy(CIMultiDict(headers or {})),
    )


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (TimeoutError(), "transient"),
        (StageTimeout(1.0), "transient"),
        (TransientError("later"), "transient"),
        (ConnectionResetError(), "transient"),
        (ConnectionRefusedError(), "transient"),
        (OSError(errno.ENETUNREACH, "unreachable"), "transient"),
        (socket.gaierror(socket.EAI_AGAIN, "dns"), "transient"),
        (CircuitOpenError("db", remaining=1.0), "transient"),
        (BulkheadFullError("db", max_concurrent=1, max_waiters=0), "transient"),
        (DataError("bad record"), "permanent"),
        (DecodeError("bad json"), "permanent"),
        (FileNotFoundError(errno.ENOENT, "missing"), "bug"),
        (ValueError("oops"), "bug"),
        (KeyError("k"), "bug"),
    ],
)
def test_builtin_rules(exc: BaseException, verdict: Verdict) -> None:
    """Builtin and riprap errors get the verdict the design assigns them."""
    assert verdict == classify(exc)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (400, "permanent"),
        (401, "permanent"),
        (403, "permanent"),
        (404, "permanent"),
        (408, "transient"),
        (409, "permanent"),
        (422, "permanent"),
        (429, "transient"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (504, "transient"),
        (599, "transient"),
    ],
)
def test_aiohttp_response_status_table(status: int, verdict: Verdict) -> None:
    """HTTP 408, 429 and 5xx are transient; every other 4xx is permanent."""
    assert verdict == classify(response_error(status))


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientConnectionError("reset"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(errno.ECONNRESET, "reset"),
        aiohttp.ClientPayloadError("truncated body"),
        aiohttp.ServerTimeoutError("read timeout"),
    ],
)
def test_aiohttp_connection_errors_are_transient(exc: Exception) -> None:
    """Connection-level aiohttp errors are transient."""
    assert "transient" == classify(exc)


def test_retry_after_from_aiohttp_delta_seconds() -> None:
    """A delta-seconds Retry-After header of a 429 is read in seconds."""
    assert 7.0 == retry_after(response_error(429, {"Retry-After": "7"}), now=NOW)


def test_retry_after_from_aiohttp_http_date() -> None:
    """An HTTP-date Retry-After header is measured from the wall-clock time."""
    exc = response_error(503, {"Retry-After": "Tue, 14 Nov 2023 22:13:50 GMT"})
    assert 30.0 == retry_after(exc, now=NOW)


def test_retry_after_from_transient_error_attribute() -> None:
    """TransientError.retry_after is honoured; its absence gives None."""
    assert 2.5 == retry_after(TransientError("slow down", retry_after=2.5), now=NOW)
    assert retry_after(TransientError("no hint"), now=NOW) is None
    assert retry_after(response_error(503), now=NOW) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    """Retry-After parsing: seconds, past dates clamp to zero, garbage is ignored."""
    assert expected == parse_retry_after(value, now=NOW)


def boto_client_error(code: str, status: int) -> Any:
    """A real botocore ClientError with the given error code and HTTP status."""
    exceptions = pytest.importorskip("botocore.exceptions")
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return exceptions.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("code", "status", "verdict"),
    [
        ("Throttling", 400, "transient"),
        ("ThrottlingException", 400, "transient"),
        ("SlowDown", 503, "transient"),
        ("ProvisionedThroughputExceededException", 400, "transient"),
        ("RequestTimeout", 400, "transient"),
        ("InternalError", 500, "transient"),
        ("ServiceUnavailable", 503, "transient"),
        ("NoSuchKey", 404, "permanent"),
        ("AccessDenied", 403, "permanent"),
        ("ValidationException", 400, "permanent"),
    ],
)
def test_botocore_client_error_table(code: str, status: int, verdict: Verdict) -> None:
    """botocore ClientError: throttling codes and 5xx are transient, other codes permanent."""
    assert verdict == classify(boto_client_error(code, status))


def test_botocore_connection_errors_are_transient() -> None:
    """botocore's endpoint and read-timeout errors are transient."""
    exceptions = pytest.importorskip("botocore.exceptions")
    assert "transient" == classify(exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert "transient" == classify(exceptions.ReadTimeoutError(endpoint_url="http://x"))


def test_register_overrides_builtin_rules_by_most_specific_type() -> None:
    """A registered type decides for its subclasses; the most specific registration wins."""
    classifier = Classifier()
    classifier.register(LookupError, "permanent")
    classifier.register(KeyError, "transient")
    assert "transient" == classifier.classify(KeyError("k"))
    assert "permanent" == classifier.classify(IndexError(0))
    assert "bug" == classify(IndexError(0))  # the default classifier is untouched


def test_hooks_come_first_and_may_pass() -> None:
    """A hook's verdict beats registrations; returning None defers to the next rule."""
    classifier = Classifier()
    classifier.register(ValueError, "permanent")
    classifier.add_hook(lambda exc: "transient" if "retry me" in str(exc) else None)
    assert "transient" == classifier.classify(ValueError("please retry me"))
    assert "permanent" == classifier.classify(ValueError("other"))


def test_copy_is_independent() -> None:
    """Registrations on a copy do not leak into the original."""
    original = Classifier()
    clone = original.copy()
    clone.register(ValueError, "transient")
    assert "bug" == original.classify(ValueError())
    assert "transient" == clone.classify(ValueError())


def test_register_rejects_unknown_verdicts() -> None:
    """A misspelt verdict is refused at registration."""
    with pytest.raises(ValueError, match="unknown verdict"):
        Classifier().register(ValueError, "retry")  # type: ignore[arg-type]
