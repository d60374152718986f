"""S3 retries count with riprap's own: a proxy in front of moto answers 503 and counts calls."""

from __future__ import annotations

import collections
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

import aiohttp
import orjson
import pytest
from aiohttp import web

import riprap
import riprap.checkpoints
from riprap.connectors.memory import MemorySink
from riprap.connectors.s3 import S3Sink, S3Source
from riprap.policies import Retry
from tests.connectors.http._servers import serve

from .conftest import client_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]

UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Service is unable to handle request.</Message><RequestId>1</RequestId></Error>"
)
"""What S3 answers with a 503."""

HOP_BY_HOP = frozenset(("host", "content-length", "transfer-encoding", "connection"))
FAST_RETRY = Retry(attempts=None, timeout=30.0, wait_initial=0.01, wait_max=0.05)
"""The sink's retry, with short waits (the test counts retries, it does not time them)."""


@final
class FlakyS3:
    """Forwards requests to moto, but answers 503 to the first ``fail`` requests of ``method``.

    ``calls`` counts every request by method, as the server saw them.
    """

    def __init__(self, upstream: str, session: aiohttp.ClientSession, *, method: str, fail: int):
        self.upstream = upstream
        self.session = session
        self.method = method
        self.fail = fail
        self.calls: collections.Counter[str] = collections.Counter()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Count the request; fail it or forward it."""
        self.calls[request.method] += 1
        body = await request.read()
        if request.method == self.method and self.fail > 0:
            self.fail -= 1
            return web.Response(status=503, body=UNAVAILABLE, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self.session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, headers=kept, body=data)


@asynccontextmanager
async def flaky_s3(store: Store, *, method: str, fail: int) -> AsyncIterator[tuple[FlakyS3, str]]:
    """A :class:`FlakyS3` in front of the test's moto server, and its URL."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        proxy = FlakyS3(store.endpoint, session, method=method, fail=fail)
        async with serve(proxy.handle) as url:
            yield proxy, url


async def put_input(store: Store, key: str, count: int) -> list[dict[str, int]]:
    """Store ``count`` JSON lines at ``key``; return their values."""
    values = [{"n": n} for n in range(count)]
    await store.put_lines(key, [orjson.dumps(v) for v in values])
    return values


async def test_sink_retries_are_riprap_retries_counted_in_report_and_metrics(store: Store) -> None:
    """Three PUTs answered 503 are three retries of the sink policy: in the report and metric."""
    values = await put_input(store, "in/a.jsonl", 20)
    async with flaky_s3(store, method="PUT", fail=3) as (proxy, url):
        pipeline = (
            riprap.Pipeline(
                "s3-flaky-sink", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=10
            )
            .source(
                S3Source(
                    store.bucket, "in/", endpoint_url=store.endpoint, client_config=client_config()
                )
            )
            .map("parse", orjson.loads)
            .sink(
                S3Sink(store.bucket, "out/", endpoint_url=url, client_config=client_config()),
                retry=FAST_RETRY,
            )
        )
        async with pipeline.open() as running:
            report = await running.wait()
            metric = running.metrics_registry.get_sample_value(
                "riprap_retries_total", {"pipeline": "s3-flaky-sink", "stage": "s3"}
            )
    lines = [line for key in await store.keys("out/") for line in (await store.get(key)).split()]
    assert values == [orjson.loads(line) for line in lines]
    assert 2 == len(await store.keys("out/"))
    assert 3 + 2 == proxy.calls["PUT"]  # botocore retried none of them itself
    assert (3, 3.0) == (report.retries, metric)


async def test_source_botocore_retries_are_counted_in_report_and_metrics(store: Store) -> None:
    """A GET answered 503 and retried inside botocore counts as a retry of the source."""
    values = await put_input(store, "in/a.jsonl", 5)
    async with flaky_s3(store, method="GET", fail=1) as (proxy, url):
        sink = MemorySink()
        pipeline = (
            riprap.Pipeline("s3-flaky-source", checkpoint=riprap.checkpoints.MemoryCheckpoints())
            .source(S3Source(store.bucket, "in/", endpoint_url=url, client_config=client_config()))
            .map("parse", orjson.loads)
            .sink(sink)
        )
        async with pipeline.open() as running:
            report = await running.wait()
            metric = running.metrics_registry.get_sample_value(
                "riprap_retries_total", {"pipeline": "s3-flaky-source", "stage": "s3"}
            )
    assert values == sink.values
    assert 1 + 2 == proxy.calls["GET"]  # the listing (failed, then retried) and the object
    assert (1, 1.0) == (report.retries, metric)
