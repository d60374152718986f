"""Timestamped webhook signatures: ``v1=`` hex HMAC-SHA256 of ``"<timestamp>.<body>"``.

The scheme follows Stripe's and Slack's: the sender signs the Unix timestamp
and the body together, and the receiver refuses a timestamp outside its
tolerance window. A captured request can therefore be replayed only within
that window, where a replay is just a duplicate delivery (which the at-least-once
contract already asks receivers to dedupe). The headers are checked before the
body is read; only the HMAC itself needs the body.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Mapping

SIGNATURE_HEADER = "X-Riprap-Signature"
"""Header holding ``v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`` (comma-separated, up to 8)."""

TIMESTAMP_HEADER = "X-Riprap-Timestamp"
"""Header holding the Unix time, in whole seconds, at which the sender signed the request."""

_VERSION = "v1"
_MAX_SIGNATURES = 8  # a sender rotating its secret signs with both keys; more is abuse
_SIGNATURE = re.compile(r"v1=([0-9a-fA-F]{64})", re.ASCII)
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)


class SignatureError(Exception):
    """A request's signature headers are missing, malformed or out of date (answered 401)."""


@final
@dataclass(frozen=True, slots=True)
class Signature:
    """The parsed signature headers of one request, not yet checked against its body."""

    timestamp: int
    digests: tuple[bytes, ...]

    def matches(self, secret: bytes, body: bytes) -> bool:
        """Whether one of the digests is the HMAC of ``"<timestamp>.<body>"`` under ``secret``."""
        mac = hmac.new(secret, b"%d." % self.timestamp, hashlib.sha256)
        mac.update(body)  # no copy of the body: the prefix goes in first
        expected = mac.digest()
        return any(hmac.compare_digest(digest, expected) for digest in self.digests)


def read_signature(headers: Mapping[str, str], *, now: float, tolerance: float) -> Signature:
    """Parse and date-check the signature headers, before the body is read.

    Raises:
        SignatureError: A header is missing or malformed (any non-ASCII text
            included), or the timestamp is more than ``tolerance`` seconds away
            from ``now``.
    """
    stamp = headers.get(TIMESTAMP_HEADER, "").strip()
    if _TIMESTAMP.fullmatch(stamp) is None:
        raise SignatureError(f"missing or malformed {TIMESTAMP_HEADER} (Unix seconds)")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"{TIMESTAMP_HEADER} is more than {tolerance:g} s away from now")
    entries = [entry.strip() for entry in headers.get(SIGNATURE_HEADER, "").split(",")]
    matches = [_SIGNATURE.fullmatch(entry) for entry in entries[:_MAX_SIGNATURES] if entry]
    if not matches or None in matches or len(entries) > _MAX_SIGNATURES:
        raise SignatureError(f"missing or malformed {SIGNATURE_HEADER} (expected {_VERSION}=<hex>)")
    return Signature(timestamp, tuple(bytes.fromhex(m.group(1)) for m in matches if m))


def sign_webhook(
    secret: str | bytes, body: bytes, *, timestamp: float | None = None
) -> dict[str, str]:
    """The headers that sign ``body`` for a :class:`~riprap.connectors.http.WebhookSource`.

    Send them with the body as it is (sign the exact bytes you send)::

        body = orjson.dumps(event)
        await session.post(url, data=body, headers=sign_webhook(secret, body))

    Args:
        secret: The shared key.
        body: The request body.
        timestamp: Unix time of the signature (default: now).

    Returns:
        ``X-Riprap-Timestamp`` and ``X-Riprap-Signature`` headers.

    .. versionadded:: 0.2
    """
    key = secret.encode() if isinstance(secret, str) else secret
    stamp = int(time.time() if timestamp is None else timestamp)
    mac = hmac.new(key, b"%d." % stamp, hashlib.sha256)
    mac.update(body)
    return {TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: f"{_VERSION}={mac.hexdigest()}"}
