"""HTTP connectors and bad input: URLs that are not HTTP, big integers in JSON bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from aiohttp import web

import riprap
import riprap.checkpoints
from riprap.connectors.http import HttpEnricher, HttpTransientError
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.policies import Retry

from ._servers import serve

if TYPE_CHECKING:
    from riprap.deadletters import DeadLetter

pytestmark = [pytest.mark.anyio, pytest.mark.network]

BIG = 123456789012345678901234567890


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http://"])
async def test_a_url_that_is_not_http_is_a_data_error(url: str) -> None:
    """A URL a function gives that is not http(s) is a DataError (invalid_url), not transient."""
    async with HttpEnricher(lambda value: url) as enrich:
        with pytest.raises(riprap.DataError) as info:
            await enrich(1)
    expected = (riprap.DataError, "invalid_url", False)
    error = info.value
    assert expected == (type(error), error.reason, isinstance(error, HttpTransientError))


async def test_an_ftp_url_is_dead_lettered_once_not_retried() -> None:
    """In a pipeline with retries, an ftp:// URL is dead-lettered after one attempt."""

    class Letters:
        """Dead letters in memory."""

        name = "letters"

        def __init__(self) -> None:
            self.letters: list[DeadLetter] = []

        async def open(self) -> None:
            """Nothing to open."""

        async def write(self, letters: list[DeadLetter]) -> None:
            """Keep the letters."""
            self.letters.extend(letters)

        async def aclose(self) -> None:
            """Nothing to close."""

    store = Letters()
    enrich = HttpEnricher(lambda value: f"ftp://example.com/{value}")
    pipeline = (
        riprap.Pipeline("ftp", checkpoint=riprap.checkpoints.MemoryCheckpoints(), dead_letter=store)
        .source(IterableSource("in", [7]))
        .map("enrich", enrich, retry=Retry(attempts=5, wait_initial=0.0, wait_max=0.0))
        .sink(MemorySink())
    )
    async with enrich:
        await pipeline.run()
    assert [("enrich", "invalid_url", 1)] == [
        (letter.stage, letter.reason, letter.attempts) for letter in store.letters
    ]


async def test_big_integers_in_a_response_stay_exact() -> None:
    """A JSON response holding an integer beyond 64 bits decodes exactly."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b'{"id": %d}' % BIG, content_type="application/json")

    async with serve(handler) as base, HttpEnricher(f"{base}/x") as enrich:
        assert {"id": BIG} == await enrich(1)
