"""The CDC source and the bound in bytes: changes weigh their WAL messages, snapshot rows
their column texts.

A batch says what its rows weighed and ends with the one that reaches
``SourceContext.max_batch_bytes``; fetches are sized from the heaviest row
seen, so one fetch holds about a batch's worth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from riprap import SourceBatch, SourceContext
from riprap.connectors.postgres import PostgresCDCSource
from riprap.testing import wait_until
from tests._sinks import GatedSink
from tests._sources import Weighed, bounded_in_bytes, settle, stalled_at_the_bound

from ._writer import ITEMS

if TYPE_CHECKING:
    from .conftest import PgHelper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

KIB = 1024
NAME_BYTES = 100 * KIB
SETUP = (ITEMS.format("items"), "CREATE PUBLICATION pub FOR TABLE items")


def insert(first: int, count: int) -> str:
    """One transaction inserting rows ``first..first+count-1``, each with a 100 KiB name."""
    return (
        "INSERT INTO items SELECT i, lpad(i::text, 6, '0') || repeat('.', "
        f"{NAME_BYTES - 6}), 0, NULL FROM generate_series({first}, {first + count - 1}) i"
    )


def source_for(pg: PgHelper) -> PostgresCDCSource:
    return PostgresCDCSource(pg.dsn, slot="s1", publication="pub", poll_interval=0.01)


async def read_changes(source: PostgresCDCSource, count: int) -> list[SourceBatch]:
    """Batches read until ``count`` changes came (bounded in time)."""
    batches: list[SourceBatch] = []
    with anyio.fail_after(20):
        while sum(len(b) for b in batches) < count:
            batch = await source.read(500)
            assert batch is not None
            if batch.values:
                batches.append(batch)
    return batches


def ids(batches: list[SourceBatch]) -> list[int]:
    return [int(v["after"]["name"][:6]) for b in batches for v in b.values]


async def test_changes_come_in_batches_of_about_the_byte_limit(pg: PgHelper) -> None:
    """Limit 250,000 bytes, changes of 100 KiB: the first fetch (before anything is weighed)
    is cut into batches of three, later fetches ask for two messages; each batch says its
    weight and every change comes once, in order."""
    await pg.execute(*SETUP)
    source = source_for(pg)
    await source.open(SourceContext(pipeline="p", positions={}, max_batch_bytes=250_000))
    try:
        await pg.execute(insert(0, 12))
        first = await read_changes(source, 12)
        await pg.execute(insert(12, 12))
        second = await read_changes(source, 12)
    finally:
        await source.aclose()
    assert list(range(24)) == ids(first + second)
    assert [3, 3, 3, 3] == [len(b) for b in first]
    assert all(len(b) <= 2 for b in second)
    for batch in first + second:
        assert len(batch) * NAME_BYTES < batch.nbytes < len(batch) * NAME_BYTES + 2 * KIB


async def test_without_a_limit_a_fetch_is_one_batch(pg: PgHelper) -> None:
    """No byte limit: the changes of one transaction come as one batch, still weighed."""
    await pg.execute(*SETUP)
    source = source_for(pg)
    await source.open(SourceContext(pipeline="p", positions={}))
    try:
        await pg.execute(insert(0, 12))
        batches = await read_changes(source, 12)
    finally:
        await source.aclose()
    assert [12] == [len(b) for b in batches]
    assert 12 * NAME_BYTES < batches[0].nbytes


async def test_a_pipeline_reads_no_more_changes_than_its_bytes_in_flight(pg: PgHelper) -> None:
    """40 changes of 100 KiB behind a stalled sink, ``max_in_flight_bytes`` 1 MiB: reading
    stops with the batch that reaches 1 MiB (all 4 MiB were read before); once the sink
    moves every change arrives, once and in order."""
    await pg.execute(*SETUP)
    source = Weighed(source_for(pg))
    weights = source.weights
    sink = GatedSink()
    async with bounded_in_bytes("cdc-bytes", source, sink, 1024 * KIB).open() as running:
        await pg.execute(insert(0, 40))
        await wait_until(lambda: sum(weights) >= 1024 * KIB, what="1 MiB read", timeout=20)
        await settle()
        await anyio.sleep(0.2)  # and a few looks at the slot
        assert sum(weights[:-1]) < 1024 * KIB <= sum(weights)
        sink.gate.set()
        await wait_until(lambda: len(sink.values) >= 40, what="40 changes written", timeout=20)
        running.stop()
        await running.wait()
    assert list(range(40)) == [int(v["after"]["name"][:6]) for v in sink.values]


async def test_a_lost_connection_with_a_cut_fetch_pending_loses_and_repeats_nothing(
    pg: PgHelper,
) -> None:
    """The server drops the connection while the rest of a cut fetch waits in the source, and
    the next read finds out (its WAL look-up, due at every read here): every change still
    comes once, in order (the new peek reads the rest again, skipping what was handed out)."""
    await pg.execute(*SETUP)
    source = PostgresCDCSource(
        pg.dsn, slot="s1", publication="pub", poll_interval=0.01, lag_interval=1e-6, name="cdc_cut"
    )
    await source.open(SourceContext(pipeline="p", positions={}, max_batch_bytes=250_000))
    try:
        await pg.execute(insert(0, 12))
        first = await read_changes(source, 3)
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'cdc_cut'",
            insert(12, 4),
        )
        rest = await read_changes(source, 13)
    finally:
        await source.aclose()
    assert list(range(16)) == ids(first + rest)


async def test_snapshot_rows_come_in_batches_of_about_the_byte_limit(pg: PgHelper) -> None:
    """Twelve rows of 100 KiB in the table before the first run, limit 250,000 bytes: the
    snapshot's first fetch (16 rows asked, nothing weighed yet) is cut into batches of three,
    each weighing its rows' texts, every row once and in order."""
    await pg.execute(*SETUP, insert(0, 12))
    source = source_for(pg)
    await source.open(SourceContext(pipeline="p", positions={}, max_batch_bytes=250_000))
    try:
        batches = await read_changes(source, 12)
    finally:
        await source.aclose()
    assert list(range(12)) == ids(batches)
    assert all(v["op"] == "r" for b in batches for v in b.values)
    assert [3, 3, 3, 3] == [len(b) for b in batches]
    for batch in batches:
        assert len(batch) * NAME_BYTES < batch.nbytes < len(batch) * (NAME_BYTES + 64)


async def test_a_pipeline_reads_no_more_snapshot_rows_than_its_bytes_in_flight(
    pg: PgHelper,
) -> None:
    """A snapshot of 40 rows of 100 KiB behind a stalled sink, ``max_in_flight_bytes`` 1 MiB:
    reading stops with the batch that reaches 1 MiB (before, snapshot rows counted by
    records only and all 4 MiB were read); once the sink moves every row arrives once, in
    order."""
    await pg.execute(*SETUP, insert(0, 40))
    values = await stalled_at_the_bound("cdc-snapshot-bytes", source_for(pg), 40)
    assert list(range(40)) == [int(v["after"]["name"][:6]) for v in values]


async def test_a_restart_with_snapshot_rows_pending_takes_the_snapshot_again(
    pg: PgHelper,
) -> None:
    """Stopped after one batch of a cut snapshot fetch (nine rows fetched, not handed out), the
    next run retakes the snapshot: every row comes again, in order, at positions after the
    checkpointed one (duplicates, never a gap), none of the old fetch's rows in between."""
    await pg.execute(*SETUP, insert(0, 12))
    source = source_for(pg)
    await source.open(SourceContext(pipeline="p", positions={}, max_batch_bytes=250_000))
    try:
        first = await read_changes(source, 3)
    finally:
        await source.aclose()
    source = source_for(pg)
    positions = {source.partition: first[-1].end}
    await source.open(SourceContext(pipeline="p", positions=positions, max_batch_bytes=250_000))
    try:
        again = await read_changes(source, 12)
    finally:
        await source.aclose()
    assert ([0, 1, 2], list(range(12))) == (ids(first), ids(again))
    assert first[-1].end == again[0].start
