"""HttpEnricher and HttpSink never put a URL's userinfo or secret query values in an error (I10)."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.lowlevel
from riprap.connectors.http import HttpDataError, HttpEnricher, HttpSink, HttpTransientError
from riprap.connectors.memory import IterableSource, MemorySink

from ._servers import closed_port_url, serve

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.network]

SECRETS = ("bob", "Pa55wordXyz", "K3yValueAbc", "T0kenValueDef")
QUERY = f"?api_key={SECRETS[2]}&access_token={SECRETS[3]}&page=2"


def _secret_url(base: str, path: str = "/v1") -> str:
    """``base`` + ``path`` with userinfo and secret query parameters added."""
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{SECRETS[0]}:{SECRETS[1]}@{rest}{path}{QUERY}"


def _leaks(text: str) -> list[str]:
    """The secrets of :data:`SECRETS` that appear in ``text``."""
    return [secret for secret in SECRETS if secret in text]


async def _not_found(request: web.Request) -> web.Response:
    """Answers 404 to everything."""
    return web.Response(status=404)


async def test_enricher_dead_letters_carry_no_url_secret(tmp_path: Path) -> None:
    """A 404 from a URL with credentials dead-letters a message and traceback without them."""
    dlq = tmp_path / "dlq.jsonl"
    async with serve(_not_found) as base:
        enrich = HttpEnricher(_secret_url(base))
        pipeline = (
            riprap.Pipeline(
                "urls",
                checkpoint=riprap.checkpoints.MemoryCheckpoints(),
                dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
            )
            .source(IterableSource("ids", [1]))
            .map("enrich", enrich)
            .sink(MemorySink())
        )
        async with enrich:
            report = await pipeline.run()
            with pytest.raises(HttpDataError) as caught:
                await enrich(1)
    letters = list(riprap.deadletters.read_dead_letters(dlq))
    shown = "".join(x.message + x.traceback for x in letters) + report.format()
    shown += str(caught.value) + caught.value.url + repr(enrich)
    assert ({"http_404": 1}, []) == (dict(report.dead_lettered), _leaks(shown))


async def test_transient_errors_carry_no_url_secret() -> None:
    """A refused connection raises an HttpTransientError whose message and url are redacted."""
    async with HttpEnricher(_secret_url(closed_port_url())) as enrich:
        with pytest.raises(HttpTransientError) as caught:
            await enrich(1)
    assert [] == _leaks(str(caught.value) + caught.value.url)


async def test_sink_errors_carry_no_url_secret() -> None:
    """A 404 from an HttpSink URL with credentials raises an error without them."""
    async with serve(_not_found) as base:
        sink = HttpSink(_secret_url(base))
        await sink.open()
        try:
            batch = riprap.Batch([1], riprap.lowlevel.Ack(lambda: None), None)
            with pytest.raises(HttpDataError) as caught:
                await sink.write(batch)
        finally:
            await sink.aclose()
    assert [] == _leaks(str(caught.value) + caught.value.url + repr(sink))


def test_a_non_http_url_config_error_carries_no_secret() -> None:
    """The ConfigError for an unusable URL shows it redacted."""
    with pytest.raises(riprap.ConfigError) as caught:
        HttpSink(f"ftp://{SECRETS[0]}:{SECRETS[1]}@example.com/x{QUERY}")
    assert [] == _leaks(str(caught.value))


def _public_text(obj: object) -> str:
    """Every public attribute of ``obj``, and its repr, as text."""
    names = [name for name in dir(obj) if not name.startswith("_")]
    return repr(obj) + " ".join(str(getattr(obj, name)) for name in names)


async def test_public_urls_are_redacted_while_requests_use_the_real_one() -> None:
    """``HttpSink.url`` and both reprs hide the secrets; the server still receives them."""
    seen: list[tuple[str | None, str | None]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), request.query.get("api_key")))
        return web.Response(status=201)

    async with serve(record) as base:
        sink = HttpSink(_secret_url(base))
        await sink.open()
        try:
            await sink.write(riprap.Batch([1], riprap.lowlevel.Ack(lambda: None), None))
        finally:
            await sink.aclose()
        async with HttpEnricher(_secret_url(base), decode="bytes") as enrich:
            await enrich(1)
            shown = _public_text(sink) + _public_text(enrich)
    basic = "Basic " + base64.b64encode(f"{SECRETS[0]}:{SECRETS[1]}".encode()).decode()
    assert ([], "[REDACTED:userinfo]" in sink.url) == (_leaks(shown), True)
    assert [(basic, SECRETS[2])] * 2 == seen
