"""WebhookSource: 200 after the checkpoint, backpressure, bad requests, exactly-once delivery."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest

import riprap
import riprap.checkpoints
from riprap.connectors.http import WebhookSource, sign_webhook
from riprap.connectors.memory import MemorySink
from riprap.testing import wait_until

from ._webhooks import Answer, GatedSink, post, running

pytestmark = [pytest.mark.anyio, pytest.mark.network]


async def test_answers_200_only_after_a_checkpoint_covers_the_records() -> None:
    """The sink has the record, but the request stays pending until the checkpoint is saved."""
    source, sink = WebhookSource(), MemorySink()
    answers: list[Answer] = []
    async with running(source, sink) as (run, client):

        async def send() -> None:
            answers.append(await post(client, source.url, {"id": 1}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await wait_until(lambda: sink.values == [{"id": 1}])
            await anyio.sleep(0.02)
            assert [] == answers
            await run.checkpoint()
            await wait_until(lambda: bool(answers))
    assert [(200, {"accepted": 1, "first": 0, "last": 0}, None)] == answers


async def test_arrays_become_records_with_consecutive_positions() -> None:
    """An array is one record per element; positions continue from request to request."""
    source, sink = WebhookSource(), MemorySink(keep_records=True)
    async with running(source, sink, checkpoint_interval=0.01) as (_, client):
        first = await post(client, source.url, [{"n": 1}, {"n": 2}, {"n": 3}])
        second = await post(client, source.url, [{"n": 4}])
    assert (200, {"accepted": 3, "first": 0, "last": 2}) == first[:2]
    assert (200, {"accepted": 1, "first": 3, "last": 3}) == second[:2]
    assert [("webhook", i, {"n": i + 1}) for i in range(4)] == [
        (r.partition, r.offset, r.value) for r in sink.records
    ]


async def test_full_pipeline_answers_429_with_retry_after() -> None:
    """With max_pending records unconfirmed, a new request gets 429 with Retry-After."""
    source, sink = WebhookSource(max_pending=2, retry_after=3), MemorySink()
    answers: list[Answer] = []
    async with running(source, sink) as (run, client):

        async def send() -> None:
            answers.append(await post(client, source.url, [{"n": 1}, {"n": 2}]))

        async def retry() -> None:
            answers.append(await post(client, source.url, {"n": 3}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await wait_until(lambda: len(sink.values) == 2)
            refused = await post(client, source.url, {"n": 3})
            assert 2 == len(sink.values)
            await run.checkpoint()
            await wait_until(lambda: len(answers) == 1)
            tg.start_soon(retry)  # there is room again
            await wait_until(lambda: len(sink.values) == 3)
            await run.checkpoint()
    assert (429, {"error": "pipeline is full"}, "3") == refused
    assert [200, 200] == [status for status, _, _ in answers]
    assert [{"n": 1}, {"n": 2}, {"n": 3}] == sink.values


async def test_a_request_not_confirmed_within_ack_timeout_gets_503() -> None:
    """Without a checkpoint within ack_timeout, the sender gets 503 and must retry."""
    source, sink = WebhookSource(ack_timeout=0.05, retry_after=1), MemorySink()
    async with running(source, sink) as (_, client):
        answer = await post(client, source.url, {"id": 1})
    assert (503, {"error": "not checkpointed yet; retry"}, "1") == answer
    assert [{"id": 1}] == sink.values


async def test_too_large_bad_json_and_bad_signature_are_refused() -> None:
    """Too large or too many records -> 413, bad JSON -> 400, bad signature -> 401."""
    secret = b"s3cret"
    source = WebhookSource(max_body_bytes=64, max_pending=3, secret=secret)
    sink = MemorySink()

    def sign(body: bytes) -> dict[str, str]:
        return sign_webhook(secret, body)

    big = b'{"pad": "' + b"x" * 100 + b'"}'
    many = b"[1, 2, 3, 4]"
    async with running(source, sink, checkpoint_interval=0.01) as (_, client):
        statuses = [
            (await post(client, source.url, big, sign(big)))[0],
            (await post(client, source.url, many, sign(many)))[0],
            (await post(client, source.url, b"{nope", sign(b"{nope")))[0],
            (await post(client, source.url, b"3", sign(b"3")))[0],
            (await post(client, source.url, b'{"a": 1}'))[0],
            (await post(client, source.url, b'{"a": 1}', sign(b'{"a": 2}')))[0],
            (await post(client, source.url, b'{"a": 1}', sign(b'{"a": 1}')))[0],
        ]
    assert [413, 413, 400, 400, 401, 401, 200] == statuses
    assert [{"a": 1}] == sink.values


async def test_each_record_reaches_the_sink_exactly_once() -> None:
    """Many concurrent senders: every record is written once and every request answered 200."""
    source, sink = WebhookSource(), MemorySink()
    statuses: list[int] = []
    async with running(source, sink, checkpoint_interval=0.01, batch_size=7) as (_, client):

        async def send(sender: int) -> None:
            records = [{"id": sender * 100 + i} for i in range(5)]
            statuses.append((await post(client, source.url, records))[0])

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for sender in range(20):
                    tg.start_soon(send, sender)
    assert [200] * 20 == statuses
    expected = sorted(s * 100 + i for s in range(20) for i in range(5))
    assert expected == sorted(v["id"] for v in sink.values)


async def test_stopping_answers_503_to_requests_still_pending() -> None:
    """Records not done when the run stops are not confirmed: their senders get 503."""
    source, sink = WebhookSource(retry_after=2), GatedSink()
    answers: list[Answer] = []
    async with aiohttp.ClientSession() as client, anyio.create_task_group() as tg:
        pipeline = (
            riprap.Pipeline(
                "hooks", checkpoint=riprap.checkpoints.MemoryCheckpoints(), drain_timeout=0.02
            )
            .source(source)
            .sink(sink)
        )
        async with pipeline.open():

            async def send() -> None:
                answers.append(await post(client, source.url, {"id": 1}))

            tg.start_soon(send)
            await wait_until(lambda: sink.started == 1)
        await wait_until(lambda: bool(answers))
    assert [(503, {"error": "not checkpointed yet; retry"}, "2")] == answers


async def test_a_restart_continues_positions_after_the_checkpoint() -> None:
    """A second run numbers new records after the first run's checkpointed position."""
    checkpoints = riprap.checkpoints.MemoryCheckpoints()
    firsts = []
    for _ in range(2):
        source, sink = WebhookSource(), MemorySink()
        async with running(source, sink, checkpoint=checkpoints, checkpoint_interval=0.01) as (
            _,
            client,
        ):
            answer = await post(client, source.url, [{"n": 1}, {"n": 2}])
        firsts.append(answer[1]["first"])
    assert [0, 2] == firsts


async def test_port_before_open_and_bad_options() -> None:
    """The port is unknown before open; a bad option is a ConfigError naming it."""
    with pytest.raises(RuntimeError):
        _ = WebhookSource().port
    names = []
    options: list[dict[str, Any]] = [{"max_pending": 0}, {"ack_timeout": 0}, {"path": "in"}]
    for kwargs in options:
        with pytest.raises(riprap.ConfigError) as caught:
            WebhookSource(**kwargs)
        names.append(caught.value.option)
    assert ["WebhookSource.max_pending", "WebhookSource.ack_timeout", "WebhookSource.path"] == names
