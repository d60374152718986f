"""HttpEnricher against real aiohttp servers: calls, decoding, sessions, status classification."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from aiohttp import web

import riprap
import riprap.checkpoints
from riprap.connectors.http import HttpDataError, HttpEnricher, HttpTransientError
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.policies import Retry, classify
from riprap.testing import VirtualClock

from ._servers import closed_port_url, serve

pytestmark = [pytest.mark.anyio, pytest.mark.network]


async def score(request: web.Request) -> web.Response:
    """Answers ``{"score": 2 * id}`` for ``/score/<id>``."""
    ident = int(request.path.rsplit("/", 1)[1])
    return web.json_response({"score": ident * 2})


def status_server(status: int, headers: dict[str, str] | None = None) -> Any:
    """A handler that always answers ``status`` with ``headers``."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, headers=headers or {}, text="nope")

    return handler


async def test_get_with_url_function_merges_the_json_response() -> None:
    """A GET per value goes to the URL the function builds and the response is merged."""
    async with serve(score) as base:
        enrich = HttpEnricher(
            lambda order: f"{base}/score/{order['id']}", merge=lambda order, data: {**order, **data}
        )
        async with enrich:
            results = [await enrich({"id": i}) for i in range(3)]
    assert [{"id": 0, "score": 0}, {"id": 1, "score": 2}, {"id": 2, "score": 4}] == results


async def test_post_sends_the_body_as_json_with_the_configured_headers() -> None:
    """POST sends ``body(value)`` as JSON with the session headers; the response replaces it."""
    seen: list[tuple[str, str | None, str | None, Any]] = []

    async def echo(request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        seen.append(
            (request.method, request.headers.get("Authorization"), request.content_type, payload)
        )
        return web.json_response({"echo": payload})

    async with serve(echo) as base:
        enrich = HttpEnricher(
            f"{base}/echo",
            method="POST",
            headers={"Authorization": "Bearer t"},
            body=lambda value: {"v": value},
        )
        async with enrich:
            result = await enrich(7)
    assert {"echo": {"v": 7}} == result
    assert [("POST", "Bearer t", "application/json", {"v": 7})] == seen


@pytest.mark.parametrize(("decode", "expected"), [("bytes", b"caf\xc3\xa9"), ("text", "café")])
async def test_decode_modes_give_bytes_or_text(decode: Any, expected: object) -> None:
    """``decode="bytes"`` returns the raw body, ``"text"`` the UTF-8 text."""

    async def plain(request: web.Request) -> web.Response:
        return web.Response(body="café".encode())

    async with serve(plain) as base, HttpEnricher(base, decode=decode) as enrich:
        assert expected == await enrich(None)


async def test_invalid_json_in_a_2xx_is_a_decode_error() -> None:
    """A 200 whose body is not JSON is a DecodeError: a data error, never retried."""
    async with serve(status_server(200)) as base, HttpEnricher(base) as enrich:
        with pytest.raises(riprap.DecodeError) as caught:
            await enrich(1)
    assert ("permanent", "decode_error") == (classify(caught.value), caught.value.reason)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
async def test_client_errors_are_data_errors_with_an_http_reason(status: int) -> None:
    """4xx other than 408/429 raise HttpDataError with reason http_<status> (dead-lettered)."""
    async with serve(status_server(status)) as base, HttpEnricher(base) as enrich:
        with pytest.raises(HttpDataError) as caught:
            await enrich(1)
    error = caught.value
    assert ("permanent", f"http_{status}", status) == (classify(error), error.reason, error.status)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_408_429_and_5xx_are_transient(status: int) -> None:
    """408, 429 and 5xx raise HttpTransientError, which the retry policy retries."""
    async with serve(status_server(status)) as base, HttpEnricher(base) as enrich:
        with pytest.raises(HttpTransientError) as caught:
            await enrich(1)
    error = caught.value
    assert ("transient", status, None) == (classify(error), error.status, error.retry_after)


async def test_retry_after_seconds_and_http_date_are_parsed() -> None:
    """Retry-After in seconds or as an HTTP date becomes ``retry_after`` in seconds."""
    clock = VirtualClock(wall_start=1_700_000_000.0)
    date = formatdate(1_700_000_000 + 30, usegmt=True)
    found: list[float | None] = []
    for header in ("7", date):
        handler = status_server(503, {"Retry-After": header})
        async with serve(handler) as base, HttpEnricher(base, clock=clock) as enrich:
            with pytest.raises(HttpTransientError) as caught:
                await enrich(1)
        found.append(caught.value.retry_after)
    assert [7.0, 30.0] == found


async def test_a_server_that_is_down_is_transient() -> None:
    """A refused connection raises HttpTransientError without a status."""
    async with HttpEnricher(closed_port_url()) as enrich:
        with pytest.raises(HttpTransientError) as caught:
            await enrich(1)
    assert ("transient", None) == (classify(caught.value), caught.value.status)
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)


async def test_a_slow_server_times_out_as_transient() -> None:
    """A response slower than ``timeout`` raises HttpTransientError (a retryable timeout)."""
    release = anyio.Event()

    async def slow(request: web.Request) -> web.Response:
        with anyio.move_on_after(5):
            await release.wait()
        return web.json_response({})

    async with serve(slow) as base:
        try:
            async with HttpEnricher(base, timeout=0.05) as enrich:
                with pytest.raises(HttpTransientError) as caught:
                    await enrich(1)
        finally:
            release.set()
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_a_slow_server_within_the_timeout_answers() -> None:
    """A response that takes a few milliseconds, under the timeout, is returned."""

    async def slow(request: web.Request) -> web.Response:
        await anyio.sleep(0.005)
        return web.json_response({"ok": True})

    async with serve(slow) as base, HttpEnricher(base, timeout=5.0) as enrich:
        assert {"ok": True} == await enrich(1)


async def test_session_is_lazy_shared_limited_and_closed_with_the_block() -> None:
    """One session is created on the first call, reused, sized as asked and closed on exit."""
    async with serve(score) as base:
        enrich = HttpEnricher(lambda v: f"{base}/score/{v}", limit=3, limit_per_host=2)
        before = enrich.session
        async with enrich:
            await enrich(1)
            first = enrich.session
            await enrich(2)
            again = enrich.session
            connector = first.connector if first is not None else None
        after = enrich.session
        async with enrich:  # a second run gets a new session
            assert {"score": 6} == await enrich(3)
            second = enrich.session
    assert (None, None) == (before, after)
    assert first is not None
    assert (True, False) == (first is again, first is second)
    assert connector is not None
    assert (3, 2, True) == (connector.limit, connector.limit_per_host, first.closed)


async def test_invalid_options_are_config_errors() -> None:
    """An unknown method or decode mode, or a bad timeout, is a ConfigError naming it."""
    options: list[dict[str, Any]] = [{"method": "PUT"}, {"decode": "xml"}, {"timeout": 0}]
    names = []
    for kwargs in options:
        with pytest.raises(riprap.ConfigError) as caught:
            HttpEnricher("http://127.0.0.1:1", **kwargs)
        names.append(caught.value.option)
    assert ["HttpEnricher.method", "HttpEnricher.decode", "HttpEnricher.timeout"] == names


@pytest.mark.parametrize(("status", "header"), [(503, "7"), (429, "7")])
async def test_retry_waits_as_long_as_retry_after_says(status: int, header: str) -> None:
    """The step's retry waits at least Retry-After seconds of the pipeline clock."""
    clock = VirtualClock()
    hits: list[float] = []

    async def flaky(request: web.Request) -> web.Response:
        hits.append(clock.monotonic())
        if len(hits) == 1:
            return web.Response(status=status, headers={"Retry-After": header})
        return web.json_response({"ok": True})

    sink = MemorySink()
    async with serve(flaky) as base, HttpEnricher(base) as enrich:
        pipeline = (
            riprap.Pipeline(
                "retry-after", checkpoint=riprap.checkpoints.MemoryCheckpoints(), clock=clock
            )
            .source(IterableSource("one", [1]))
            .map("call", enrich, retry=Retry(attempts=3, wait_initial=0.01, wait_max=30.0))
            .sink(sink)
        )
        async with clock.autojump():
            report = await pipeline.run()
    assert [{"ok": True}] == sink.values
    assert (2, 1) == (len(hits), report.retries)
    assert hits[1] - hits[0] >= 7.0


async def test_the_run_closes_the_enricher_session() -> None:
    """Without ``async with``, the run closes the enricher's session when it ends."""
    async with serve(score) as base:
        enrich = HttpEnricher(lambda order: f"{base}/score/{order['id']}")
        sink = MemorySink()
        p = (
            riprap.Pipeline("closing", checkpoint=riprap.checkpoints.MemoryCheckpoints())
            .source(IterableSource("ids", [{"id": 1}, {"id": 2}]))
            .map("score", enrich, concurrency=2)
            .sink(sink)
        )
        await p.run()
    assert [{"score": 2}, {"score": 4}] == sink.values
    assert enrich.session is None
