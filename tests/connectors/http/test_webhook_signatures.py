"""WebhookSource signatures: timestamped HMACs, refused on the headers when stale or malformed."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from riprap.connectors.http import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSource,
    sign_webhook,
)
from riprap.connectors.memory import MemorySink
from riprap.testing import VirtualClock

from ._webhooks import HeldBody, post, post_held, running

pytestmark = [pytest.mark.anyio, pytest.mark.network]

SECRET = b"s3cret"
BODY = b'{"id": 1}'


def test_sign_webhook_signs_the_timestamp_and_the_body() -> None:
    """The signature is the hex HMAC-SHA256 of ``"<timestamp>.<body>"``, as documented."""
    headers = sign_webhook("s3cret", BODY, timestamp=1_700_000_000.7)
    digest = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    expected = {TIMESTAMP_HEADER: "1700000000", SIGNATURE_HEADER: f"v1={digest}"}
    assert expected == headers


async def test_a_replay_after_the_tolerance_window_is_refused() -> None:
    """A signed request is accepted; the same request 301 s later is refused with 401."""
    clock = VirtualClock()
    source = WebhookSource(secret=SECRET, clock=clock, signature_tolerance=300)
    headers = sign_webhook(SECRET, BODY, timestamp=clock.time())
    async with running(source, MemorySink(), checkpoint_interval=0.01) as (_, client):
        first = await post(client, source.url, BODY, headers)
        clock.advance(301)
        replay = await post(client, source.url, BODY, headers)
    assert (200, 401) == (first[0], replay[0])
    assert {"error": "X-Riprap-Timestamp is more than 300 s away from now"} == replay[1]


async def test_signature_headers_are_checked_before_the_body_is_sent() -> None:
    """Missing, malformed, stale, future, body-only and non-ASCII signatures: 401, no body sent."""
    clock = VirtualClock()
    now = int(clock.time())
    good = sign_webhook(SECRET, BODY, timestamp=now)[SIGNATURE_HEADER]
    body_only = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    cases: list[dict[str, str]] = [
        {},
        {TIMESTAMP_HEADER: str(now)},
        {TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: good},
        {TIMESTAMP_HEADER: str(now - 301), SIGNATURE_HEADER: good},
        {TIMESTAMP_HEADER: str(now + 301), SIGNATURE_HEADER: good},
        {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: body_only},
        {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: f"sha256={body_only}"},
        {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: "v1=" + "é" * 64},
        {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: ",".join([good] * 9)},
    ]
    source = WebhookSource(secret=SECRET, clock=clock)
    held = [HeldBody(BODY) for _ in cases]
    async with running(source, MemorySink()) as (run, client):
        statuses = [
            (await post_held(client, source.url, body, headers))[0]
            for body, headers in zip(held, cases, strict=True)
        ]
        refused = dict(run.statistics().source.outcomes)
    assert [401] * len(cases) == statuses
    assert [0] * len(cases) == [body.sent for body in held]
    assert {"requests_unauthorized": len(cases)} == refused


async def test_a_signature_must_match_the_body_and_may_come_in_pairs() -> None:
    """A wrong key or another body is 401; with two signatures, one matching is enough."""
    clock = VirtualClock()
    source = WebhookSource(secret=SECRET, clock=clock)
    now = clock.time()
    wrong_key = sign_webhook(b"other", BODY, timestamp=now)
    other_body = sign_webhook(SECRET, b'{"id": 2}', timestamp=now)
    rotating = dict(wrong_key)
    rotating[SIGNATURE_HEADER] += ", " + sign_webhook(SECRET, BODY, timestamp=now)[SIGNATURE_HEADER]
    async with running(source, MemorySink(), checkpoint_interval=0.01) as (_, client):
        statuses = [
            (await post(client, source.url, BODY, headers))[0]
            for headers in (wrong_key, other_body, rotating)
        ]
    assert [401, 401, 200] == statuses
