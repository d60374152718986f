"""Response bodies are read up to a bound, against real aiohttp servers on 127.0.0.1.

``concurrency`` enrichment calls may each hold a body, so a dependency that
answers with gigabytes (or a small gzip body that inflates to them) must not
take the process with it: the enricher stops reading at ``max_response_bytes``
and dead-letters the record (``response_too_large``), and the sink, which
does not use the answer, treats a long answer to a 2xx write as written.
"""

from __future__ import annotations

import tracemalloc
import zlib
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

import riprap
import riprap.lowlevel
from riprap import ConfigError, DataError
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.http import HttpEnricher, HttpSink
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import SqliteDeadLetters, read_dead_letters

from ._servers import serve

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.network]

LIMIT = 1024 * 1024
"""``max_response_bytes`` of these tests."""
FLOOD = 64 * 1024 * 1024
"""What the hostile answers hold: 64 times the limit."""


def gzip_of_zeros(size: int) -> bytes:
    """``size`` zero bytes as one gzip stream, compressed a MiB at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    return b"".join(
        [*(compressor.compress(block) for _ in range(size // len(block))), compressor.flush()]
    )


async def answer(request: web.Request) -> web.StreamResponse:
    """``/exact``: a JSON body of exactly the limit; ``/long``: a Content-Length over it;
    ``/stream``: 64 MiB chunked, no length; ``/bomb``: 64 MiB of gzip-encoded zeros.
    """
    kind = request.path.rsplit("/", 1)[1]
    if kind == "exact":
        return web.Response(body=b'"' + b"x" * (LIMIT - 2) + b'"', content_type="application/json")
    if kind == "long":
        return web.Response(body=b"x" * (LIMIT + 1), content_type="application/json")
    response = web.StreamResponse()
    if kind == "bomb":
        body = gzip_of_zeros(FLOOD)
        response.headers["Content-Encoding"] = "gzip"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        return response
    response.enable_chunked_encoding()
    await response.prepare(request)
    block = b"x" * (1024 * 1024)
    for _ in range(FLOOD // len(block)):
        try:
            await response.write(block)
        except ConnectionError:  # the client stopped reading and closed the connection
            break
    return response


async def test_the_enricher_stops_reading_at_the_limit_and_dead_letters_the_record(
    tmp_path: Path,
) -> None:
    """A body of exactly the limit is read; one announced over it, one streamed past it and
    a gzip body inflating past it are each a ``response_too_large`` dead letter, read no
    further than about the limit.
    """
    async with serve(answer) as base:
        enrich = HttpEnricher(lambda kind: f"{base}/{kind}", max_response_bytes=LIMIT)
        sink = MemorySink()
        pipeline = (
            riprap.Pipeline(
                "enrich",
                checkpoint=MemoryCheckpoints(),
                dead_letter=SqliteDeadLetters(tmp_path / "dlq.db"),
            )
            .source(IterableSource("kinds", ["long", "stream", "exact", "bomb"]))
            .map("call", enrich)
            .sink(sink)
        )
        tracemalloc.start()
        try:
            async with enrich:
                await pipeline.run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    letters = list(read_dead_letters(tmp_path / "dlq.db"))
    assert ["x" * (LIMIT - 2)] == sink.values
    assert [
        ("long", "response_too_large"),
        ("stream", "response_too_large"),
        ("bomb", "response_too_large"),
    ] == [(letter.original_value(), letter.reason) for letter in letters]
    assert f"over max_response_bytes ({LIMIT})" in letters[0].message
    assert peak < 16 * LIMIT


async def test_one_call_over_the_limit_raises_a_data_error() -> None:
    """Called directly (as a step would), the enricher raises a DataError naming the URL."""
    async with (
        serve(answer) as base,
        HttpEnricher(f"{base}/long", max_response_bytes=LIMIT) as enrich,
    ):
        with pytest.raises(DataError, match=r"GET .*/long: the response is over") as caught:
            await enrich(None)
    assert "response_too_large" == caught.value.reason


async def test_a_long_answer_to_a_write_is_not_a_failed_write() -> None:
    """The sink does not use its answers: a 2xx with 64 MiB streamed back is a done write,
    and the sink reads no more of it than a small answer.
    """
    written: list[bytes] = []

    async def receive(request: web.Request) -> web.StreamResponse:
        written.append(await request.read())
        return await answer(request)

    async with serve(receive) as base:
        sink = HttpSink(f"{base}/stream")
        await sink.open()
        tracemalloc.start()
        try:
            await sink.write(riprap.Batch([{"a": 1}], riprap.lowlevel.Ack(lambda: None), None))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await sink.aclose()
    assert [b'{"a":1}'] == written
    assert peak < 16 * LIMIT


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1MiB"])
def test_max_response_bytes_must_be_a_positive_whole_number(value: Any) -> None:
    """A limit that is not a positive int is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match="max_response_bytes"):
        HttpEnricher("http://127.0.0.1/x", max_response_bytes=value)
