"""S3Source and the bound in bytes: an object's records share its content's bytes by count.

A batch says what its records stand for (the decompressed content over its
records, in proportion) and ends once it reaches ``SourceContext.max_batch_bytes``;
the pipeline then waits before downloading another object while its bound is
in flight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from riprap.connectors.s3 import S3Source
from riprap.testing import wait_until
from tests._sinks import GatedSink
from tests._sources import Weighed, bounded_in_bytes, read_to_end, settle

from .conftest import client_config

if TYPE_CHECKING:
    from riprap import SourceBatch

    from .conftest import Store

pytestmark = [pytest.mark.s3, pytest.mark.anyio]

KIB = 1024
LINE = 100 * KIB
"""Bytes of one test line, its newline included."""


def heavy(first: int, count: int) -> list[bytes]:
    """``count`` lines of ``LINE`` bytes with their newline, each starting with its index."""
    return [f"{i:06}".encode().ljust(LINE - 1, b".") for i in range(first, first + count)]


def make_source(store: Store, **options: Any) -> S3Source:
    return S3Source(
        store.bucket, "in/", endpoint_url=store.endpoint, client_config=client_config(), **options
    )


def numbers(batches: list[SourceBatch]) -> list[int]:
    return [int(v[:6]) for b in batches for v in b.values]


@pytest.mark.parametrize("compress", [False, True])
async def test_batches_end_at_the_byte_limit_and_weigh_the_content(
    store: Store, compress: bool
) -> None:
    """Ten lines of 100 KiB, limit 250,000 bytes: batches of three (the third reaches it),
    each weighing its share of the content, decompressed for a gzip object."""
    await store.put_lines(
        "in/a.jsonl.gz" if compress else "in/a.jsonl", heavy(0, 10), compress=compress
    )
    batches = await read_to_end(make_source(store), max_batch_bytes=250_000)
    assert [3, 3, 3, 1] == [len(b) for b in batches]
    assert [3 * LINE, 3 * LINE, 3 * LINE, LINE] == [b.nbytes for b in batches]
    assert list(range(10)) == numbers(batches)


async def test_without_a_limit_batches_are_cut_by_count_and_still_weighed(store: Store) -> None:
    await store.put_lines("in/a.jsonl", heavy(0, 10))
    batches = await read_to_end(make_source(store))
    assert [(10, 10 * LINE)] == [(len(b), b.nbytes) for b in batches]


async def test_a_pipeline_downloads_no_more_than_its_bytes_in_flight(store: Store) -> None:
    """Four objects of ten 100 KiB lines behind a stalled sink, ``max_in_flight_bytes`` 1 MiB:
    batches of two lines (128 KiB, an eighth of the bound), and reading stops with the batch
    that reaches 1 MiB, two lines into the second object, before the third is downloaded (all
    four were read before); once the sink moves, every line arrives in order."""
    for n in range(4):
        await store.put_lines(f"in/{n}.jsonl", heavy(10 * n, 10))
    source = Weighed(make_source(store))
    weights = source.weights
    sink = GatedSink()
    async with bounded_in_bytes("s3-bytes", source, sink, 1024 * KIB).open() as running:
        await wait_until(lambda: sum(weights) >= 1024 * KIB, what="1 MiB read", timeout=20)
        await settle()
        assert sum(weights[:-1]) < 1024 * KIB <= sum(weights)
        assert all(w == 2 * LINE for w in weights)
        assert (2, 12) == (source.statistics().objects_read, source.statistics().records)
        sink.gate.set()
        report = await running.wait()
    assert list(range(40)) == [int(v[:6]) for v in sink.values]
    assert 4 == len(report.positions)
