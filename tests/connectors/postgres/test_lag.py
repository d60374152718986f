"""The CDC source's lag: bytes of WAL behind the server, looked up on the pipeline's clock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import riprap
import riprap.checkpoints
from riprap import ConfigError, SourceContext
from riprap.connectors.postgres import PostgresCDCSource
from riprap.testing import VirtualClock, wait_until

from ._writer import ITEMS, start_writers

if TYPE_CHECKING:
    from .conftest import PgHelper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SETUP = (ITEMS.format("items"), "CREATE PUBLICATION pub FOR TABLE items")
INSERT = "INSERT INTO items SELECT i, 'x', 0 FROM generate_series({}, {}) i"


def test_lag_interval_is_checked() -> None:
    """A lag interval that is not a positive number of seconds is refused, naming the option."""
    with pytest.raises(ConfigError, match="lag_interval"):
        PostgresCDCSource("postgresql://x/db", slot="s", publication="p", lag_interval=0)


async def read_some(source: PostgresCDCSource, count: int) -> list[Any]:
    """Read until ``count`` values arrived (batches of at most 10: a slow reader)."""
    values: list[Any] = []
    with anyio.fail_after(20):
        while len(values) < count:
            batch = await source.read(min(10, count - len(values)))
            assert batch is not None
            values.extend(batch.values)
    return values


async def test_lag_grows_for_a_slow_reader_and_falls_to_zero_when_caught_up(
    pg: PgHelper,
) -> None:
    """Looked up once per interval: grows while the reader lags, 0 once it caught up."""
    await pg.execute(*SETUP)
    clock = VirtualClock()
    source = PostgresCDCSource(
        pg.dsn, slot="s1", publication="pub", snapshot=False, poll_interval=0.01, lag_interval=5
    )
    await source.open(SourceContext(pipeline="p", positions={}, clock=clock))
    lags: list[int] = []

    def lag() -> int:
        return source.lag()[source.partition]

    def looked_up_at() -> float | None:
        stats = source.statistics()
        return None if stats is None else stats.looked_up_at

    try:
        first = source.statistics()
        assert first is not None
        await pg.execute(INSERT.format(0, 599))
        await read_some(source, 10)
        now = source.statistics()
        assert now is not None
        # No look-up before the interval has passed, however much was written and read.
        assert (first.server_lsn, 0.0) == (now.server_lsn, now.looked_up_at)
        assert first.read_lsn < now.read_lsn
        for at in (600, 1_200):  # each round: more written than read, then the interval passes
            clock.advance(5)
            await read_some(source, 10)
            lags.append(lag())
            await pg.execute(INSERT.format(at, at + 599))
        clock.advance(5)
        await read_some(source, 10)
        lags.append(lag())
        await read_some(source, 1_800 - 40)
        # WAL with no change for this source (a table outside the publication) is passed too.
        await pg.execute("CREATE TABLE other (id int)", "INSERT INTO other VALUES (1)")
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.read, 10)  # waits at the end of the stream, peeking again
            clock.advance(5)
            await wait_until(lambda: lag() == 0 and looked_up_at() == 20.0, timeout=10)
            caught_up = source.statistics()
            await pg.execute(INSERT.format(5_000, 5_000))  # lets the waiting read return
    finally:
        await source.aclose()
    assert lags[0] > 0
    assert lags[0] < lags[1] < lags[2]
    assert caught_up is not None
    assert caught_up.server_lsn <= caught_up.read_lsn
    assert caught_up.retained_bytes == caught_up.server_lsn - caught_up.confirmed_lsn


async def test_the_slot_confirmed_position_follows_the_checkpoint(pg: PgHelper) -> None:
    """Retained WAL shrinks once a checkpoint is confirmed to the slot."""
    await pg.execute(*SETUP)
    clock = VirtualClock()
    source = PostgresCDCSource(
        pg.dsn, slot="s1", publication="pub", snapshot=False, poll_interval=0.01, lag_interval=1
    )
    await source.open(SourceContext(pipeline="p", positions={}, clock=clock))
    try:
        await pg.execute(INSERT.format(0, 999))
        await read_some(source, 1_000)
        before = source.statistics()
        await pg.execute(INSERT.format(1_000, 1_000))
        with anyio.fail_after(20):
            batch = await source.read(10)
        assert batch is not None
        await source.committed({source.partition: batch.end})
        await pg.execute(INSERT.format(1_001, 1_001))
        clock.advance(1)
        with anyio.fail_after(20):
            await source.read(10)  # the next peek confirms the checkpoint first
        after = source.statistics()
    finally:
        await source.aclose()
    assert before is not None
    assert after is not None
    assert before.confirmed_lsn < after.confirmed_lsn
    assert after.retained_bytes == after.server_lsn - after.confirmed_lsn


async def test_a_slow_pipeline_shows_its_lag_in_the_run_statistics(pg: PgHelper) -> None:
    """Through a pipeline: the statistics /metrics and the progress line read show the lag."""
    await pg.execute(*SETUP)
    release = anyio.Event()
    source = PostgresCDCSource(
        pg.dsn, slot="s1", publication="pub", snapshot=False, poll_interval=0.01, lag_interval=0.05
    )
    stop = anyio.Event()
    written: list[int] = []

    class SlowSink:
        """Takes 20 ms a batch until released: the pipeline falls behind the writers."""

        name = "slow"
        idempotent = True

        async def open(self) -> None:
            return None

        async def write(self, batch: riprap.Batch) -> None:
            written.append(len(batch.items))
            if not release.is_set():
                await anyio.sleep(0.02)

        async def flush(self) -> None:
            return None

        async def aclose(self) -> None:
            return None

    pipeline = (
        riprap.Pipeline("lag", checkpoint=riprap.checkpoints.MemoryCheckpoints(), batch_size=10)
        .source(source)
        .sink(SlowSink())
    )
    async with pipeline.open() as running:

        def lag() -> int:
            stats = running.statistics()
            assert stats.source.lag is not None
            return stats.lag or 0

        async with anyio.create_task_group() as tg:
            await start_writers(pg.dsn, stop, tg, 0)
            await wait_until(lambda: lag() > 100_000, timeout=30)
            behind = lag()
            await wait_until(lambda: lag() > behind, timeout=30)
            stop.set()
        release.set()
        await wait_until(lambda: lag() == 0, timeout=30)
        final = running.statistics()
        running.stop()
    assert {source.partition: 0} == final.source.lag
    assert 0.0 == final.source.lag_seconds.get(source.partition, 0.0)
