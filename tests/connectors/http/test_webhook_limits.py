"""WebhookSource bounds: body bytes held until the checkpoint, requests in progress, slow bodies."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest

import riprap
from riprap.connectors.http import WebhookSource, WebhookStatistics
from riprap.connectors.memory import MemorySink
from riprap.testing import wait_until
from tests._sinks import GatedSink
from tests._sources import Weighed, settle

from ._webhooks import Answer, HeldBody, post, post_held, running

pytestmark = [pytest.mark.anyio, pytest.mark.network]


def padded(size: int, n: int = 0) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    head = b'{"n": %d, "pad": "' % n
    return head + b"x" * (size - len(head) - 2) + b'"}'


async def test_body_bytes_stay_reserved_until_the_checkpoint() -> None:
    """Two 100-byte bodies fill 200 bytes: a third gets 429 unsent until a checkpoint frees them."""
    source, sink = WebhookSource(max_body_bytes=100, max_pending_bytes=200), MemorySink()
    answers: list[Answer] = []
    async with running(source, sink) as (run, client):

        async def send(n: int) -> None:
            answers.append(await post(client, source.url, padded(100, n)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, 1)
            tg.start_soon(send, 2)
            await wait_until(lambda: len(sink.values) == 2)
            written = source.statistics()  # in the sink, not yet checkpointed
            held = HeldBody(padded(100, 3))
            refused = await post_held(client, source.url, held)
            await run.checkpoint()
            await wait_until(lambda: len(answers) == 2)
            checkpointed = source.statistics()
            tg.start_soon(send, 3)  # there is room again
            await wait_until(lambda: len(sink.values) == 3)
            await run.checkpoint()
    assert WebhookStatistics(requests=2, pending_records=2, pending_bytes=200) == written
    assert ((429, {"error": "pipeline is full"}, "1"), 0) == (refused, held.sent)
    assert WebhookStatistics(requests=0, pending_records=0, pending_bytes=0) == checkpointed
    assert [200, 200, 200] == [status for status, _, _ in answers]
    assert [1, 2, 3] == [value["n"] for value in sink.values]


async def test_requests_beyond_max_requests_get_503_before_the_body() -> None:
    """With two requests waiting for their checkpoint, a third is answered 503 unread."""
    source, sink = WebhookSource(max_requests=2, retry_after=2), MemorySink()
    answers: list[Answer] = []
    async with running(source, sink) as (run, client):

        async def send(n: int) -> None:
            answers.append(await post(client, source.url, {"n": n}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, 1)
            tg.start_soon(send, 2)
            await wait_until(lambda: len(sink.values) == 2)
            held = HeldBody(b'{"n": 3}')
            busy = await post_held(client, source.url, held)
            await run.checkpoint()
        outcomes = dict(run.statistics().source.outcomes)
    assert ((503, {"error": "too many requests in progress"}, "2"), 0) == (busy, held.sent)
    assert [200, 200] == [status for status, _, _ in answers]
    assert {"requests_busy": 1} == outcomes


async def test_a_body_not_delivered_within_body_timeout_gets_408_and_frees_its_bytes() -> None:
    """A sender that never sends its announced body gets 408; its reservation is given back."""
    source = WebhookSource(body_timeout=0.05)
    held = HeldBody(b'{"n": 1}')
    async with running(source, MemorySink()) as (_, client):
        answer = await post_held(client, source.url, held)
        after = source.statistics()
    assert (408, {"error": "body not received within 0.05 s"}) == answer[:2]
    assert WebhookStatistics(requests=0, pending_records=0, pending_bytes=0) == after


async def test_a_chunked_body_reserves_max_body_bytes_until_it_is_read() -> None:
    """Without a Content-Length, max_body_bytes is reserved, then the body's real size."""
    source, sink = WebhookSource(max_body_bytes=1000, max_pending_bytes=1500), MemorySink()
    chunked = HeldBody(padded(300), chunk=100, length=False)
    seen: list[WebhookStatistics] = []
    answers: list[Answer] = []
    async with running(source, sink) as (run, client):

        async def send() -> None:
            answers.append(await post_held(client, source.url, chunked))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await wait_until(lambda: source.statistics().requests == 1)
            seen.append(source.statistics())
            chunked.release()
            await wait_until(lambda: len(sink.values) == 1)
            seen.append(source.statistics())
            await run.checkpoint()
    assert [1000, 300] == [stats.pending_bytes for stats in seen]
    assert [200] == [status for status, _, _ in answers]


async def test_expect_100_continue_is_answered_429_without_an_interim_100() -> None:
    """A full source answers ``Expect: 100-continue`` with 429 at once, so no body is ever sent."""
    source, sink = WebhookSource(max_body_bytes=100, max_pending_bytes=100), MemorySink()
    request = (
        b"POST /ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    )
    async with running(source, sink) as (run, client), anyio.create_task_group() as tg:

        async def send() -> None:
            async with client.post(source.url, data=padded(100), expect100=True) as response:
                assert 200 == response.status

        tg.start_soon(send)
        await wait_until(lambda: len(sink.values) == 1)
        async with await anyio.connect_tcp("127.0.0.1", source.port) as stream:
            await stream.send(request)
            with anyio.fail_after(5):
                first_line = (await stream.receive()).split(b"\r\n", 1)[0]
        await run.checkpoint()
    assert b"HTTP/1.1 429 Too Many Requests" == first_line


async def test_every_refusal_is_a_source_outcome() -> None:
    """Refused requests are counted by why, in the run's source outcomes."""
    source = WebhookSource(max_body_bytes=100, max_pending_bytes=100, max_pending=1)
    async with running(source, MemorySink(), checkpoint_interval=0.01) as (run, client):
        statuses = [
            (await post(client, source.url, body))[0]
            for body in (b"[1, 2]", b"nope", padded(101), b'{"ok": 1}')
        ]
        outcomes = dict(run.statistics().source.outcomes)
    assert [413, 400, 413, 200] == statuses
    assert {"requests_too_large": 2, "requests_malformed": 1} == outcomes


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"max_body_bytes": 2000, "max_pending_bytes": 1000}, "WebhookSource.max_pending_bytes"),
        ({"max_pending_bytes": 0}, "WebhookSource.max_pending_bytes"),
        ({"max_requests": 0}, "WebhookSource.max_requests"),
        ({"body_timeout": 0}, "WebhookSource.body_timeout"),
        ({"signature_tolerance": -1}, "WebhookSource.signature_tolerance"),
    ],
)
def test_bad_bounds_are_config_errors(options: dict[str, Any], option: str) -> None:
    """A bound that cannot work is a ConfigError naming it."""
    with pytest.raises(riprap.ConfigError) as caught:
        WebhookSource(**options)
    assert option == caught.value.option


async def test_a_client_session_keeps_working_after_refusals() -> None:
    """Refusals close their connection; the same session's next request still succeeds."""
    source = WebhookSource(max_body_bytes=10)
    async with running(source, MemorySink(), checkpoint_interval=0.01) as (_, client):
        statuses = [(await post(client, source.url, b'{"a": "long"}'))[0] for _ in range(3)]
        async with client.post(source.url, json={"a": 1}) as response:
            statuses.append(response.status)
    assert [413, 413, 413, 200] == statuses
    assert isinstance(client, aiohttp.ClientSession)


KIB = 1024
MIB = 1024 * KIB


async def test_bodies_count_toward_the_bytes_in_flight() -> None:
    """Eight requests of five records of 50 KiB behind a stalled sink, ``max_in_flight_bytes``
    1 MiB: each record weighs its share of its body, a batch ends with the record that reaches
    an eighth of the bound, and reading stops with the batch that reaches 1 MiB (before,
    bodies counted by records only); once the sink moves and a checkpoint covers them, every
    record arrives once and every request gets 200."""
    source = WebhookSource()
    weighed = Weighed(source)
    sink = GatedSink()
    bodies = [[{"n": 5 * r + i, "pad": "x" * 50 * KIB} for i in range(5)] for r in range(8)]
    answers: list[Answer] = []
    # Queues long enough that only the bound in bytes stops the reading.
    async with running(weighed, sink, max_in_flight_bytes=MIB, queue_size=100) as (run, client):

        async def send(body: list[dict[str, Any]]) -> None:
            answers.append(await post(client, source.url, body))

        async with anyio.create_task_group() as tg:
            for body in bodies:
                tg.start_soon(send, body)
            weights = weighed.weights
            await wait_until(lambda: sum(weights) >= MIB, what="1 MiB read", timeout=20)
            await settle()
            assert sum(weights[:-1]) < MIB <= sum(weights)
            assert all(w - 51 * KIB < MIB // 8 <= w for w in weights)
            sink.gate.set()
            await wait_until(lambda: len(sink.values) == 40, what="40 records written")
            await run.checkpoint()
    assert list(range(40)) == sorted(v["n"] for v in sink.values)
    assert [200] * 8 == [status for status, _, _ in answers], answers
