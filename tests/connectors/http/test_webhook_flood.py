"""A flood of large requests against a stalled pipeline: memory stays near ``max_pending_bytes``."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest

import riprap
import riprap.checkpoints
from riprap.connectors.http import WebhookSource
from riprap.testing import wait_until

from ._webhooks import Answer, GatedSink, HeldBody, post_held

pytestmark = [pytest.mark.anyio, pytest.mark.network]

REQUESTS = 100
BODY_BYTES = 1 << 20
MAX_PENDING_BYTES = 8 << 20
ACCEPTED = MAX_PENDING_BYTES // BODY_BYTES
RSS_ALLOWANCE = 4 * MAX_PENDING_BYTES + (32 << 20)
"""Growth allowed (64 MiB): records, connection buffers, allocator slack.

Measured: about 18 MiB once the 8 bodies are in, 28 to 36 MiB at the end; a
source that admitted the flood grew by 133 MiB with the first 100 requests.
"""

STATM = Path("/proc/self/statm")


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def rss_bytes() -> int:
    """Resident memory in use by this process (second field of ``/proc/self/statm``).

    Freed heap is handed back first: every run raises glibc's trim threshold
    for the whole process (``malloc_trim_threshold``), so without this the
    figure would include up to that much memory the allocator keeps for reuse,
    which is not memory the source holds.
    """
    if GLIBC:
        ctypes.CDLL(None).malloc_trim(0)
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_mib_record() -> bytes:
    """A JSON object of exactly :data:`BODY_BYTES` bytes."""
    head = b'{"pad": "'
    return head + b"x" * (BODY_BYTES - len(head) - 2) + b'"}'


@pytest.mark.skipif(not STATM.exists(), reason="needs /proc/self/statm")
async def test_a_flood_of_large_requests_is_refused_unread_and_memory_stays_bounded() -> None:
    """100 concurrent 1 MiB requests, then 100 more with bodies flowing, against a stalled sink.

    Only 8 (8 MiB of bodies) are admitted; every other request gets 429 before
    any body byte is sent, the reserved bytes never exceed ``max_pending_bytes``
    and the process grows by far less than the 100+ MiB of the flood.
    """
    source = WebhookSource(max_body_bytes=BODY_BYTES, max_pending_bytes=MAX_PENDING_BYTES)
    sink = GatedSink()
    body = one_mib_record()
    held = [HeldBody(body) for _ in range(REQUESTS)]
    flowing = [HeldBody(body) for _ in range(REQUESTS)]
    answers: list[Answer] = []
    reserved: list[int] = []
    rss: list[int] = []
    pipeline = (
        riprap.Pipeline(
            "flood", checkpoint=riprap.checkpoints.MemoryCheckpoints(), drain_timeout=0.02
        )
        .source(source)
        .sink(sink)
    )
    connector = aiohttp.TCPConnector(limit=2 * REQUESTS)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def send(body: HeldBody) -> None:
            answer = await post_held(client, source.url, body)
            reserved.append(source.statistics().pending_bytes)
            rss.append(rss_bytes())
            answers.append(answer)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg, pipeline.open():
                baseline = rss_bytes()
                for request in held:
                    tg.start_soon(send, request)
                await wait_until(lambda: len(answers) == REQUESTS - ACCEPTED)
                sent_before_refusals = sum(request.sent for request in held)
                for request in held:
                    request.release()
                await wait_until(lambda: source.statistics().pending_records == ACCEPTED)
                for request in flowing:
                    request.release()
                    tg.start_soon(send, request)
                await wait_until(lambda: len(answers) == 2 * REQUESTS - ACCEPTED, timeout=30)
                stalled = (sink.started, source.statistics())
                rss.append(rss_bytes())
    statuses = [status for status, _, _ in answers]
    assert 0 == sent_before_refusals
    assert [429] * (2 * REQUESTS - ACCEPTED) == statuses[: 2 * REQUESTS - ACCEPTED]
    assert [503] * ACCEPTED == statuses[2 * REQUESTS - ACCEPTED :]  # stopped before a checkpoint
    assert (1, ACCEPTED, MAX_PENDING_BYTES) == (
        stalled[0],
        stalled[1].pending_records,
        stalled[1].pending_bytes,
    )
    assert max(reserved) <= MAX_PENDING_BYTES
    growth = max(rss) - baseline
    assert growth < RSS_ALLOWANCE, f"grew by {growth / (1 << 20):.0f} MiB"
