"""The PostgreSQL change-data-capture source against a real server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from riprap import ConfigError, Source, SourceBatch, SourceContext
from riprap.connectors.postgres import PostgresCDCSource, ReplicationSlotError

from ._writer import ITEMS, start_writers

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import PgHelper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SETUP = (
    ITEMS.format("items"),
    "CREATE PUBLICATION pub FOR TABLE items",
)


def source_for(pg: PgHelper, **options: Any) -> PostgresCDCSource:
    return PostgresCDCSource(pg.dsn, slot="s1", publication="pub", poll_interval=0.01, **options)


async def read_until(
    source: PostgresCDCSource,
    done: Callable[[list[Any]], bool],
    *,
    max_records: int = 500,
    within: float = 20.0,
    commit: bool = False,
) -> tuple[list[Any], list[SourceBatch]]:
    """Read batches until ``done(values)`` holds; return the values and the batches.

    With ``commit``, each batch's end is reported as checkpointed, as a pipeline would.
    """
    values: list[Any] = []
    batches: list[SourceBatch] = []
    with anyio.fail_after(within):
        while not done(values):
            batch = await source.read(max_records)
            assert batch is not None
            batches.append(batch)
            values.extend(batch.values)
            if commit:
                await source.committed({source.partition: batch.end})
    return values, batches


async def opened(source: PostgresCDCSource, position: int | None = None) -> PostgresCDCSource:
    positions = {} if position is None else {source.partition: position}
    await source.open(SourceContext(pipeline="p", positions=positions))
    return source


def test_protocol() -> None:
    """The source satisfies the Source protocol and checks its names."""
    assert isinstance(PostgresCDCSource("postgresql://x/db", slot="s", publication="p"), Source)
    with pytest.raises(ConfigError):
        PostgresCDCSource("postgresql://x/db", slot="Bad-Slot", publication="p")


async def test_snapshot_then_changes(pg: PgHelper) -> None:
    """Existing rows arrive as reads, then inserts, updates and deletes as change events."""
    await pg.execute(
        *SETUP, "INSERT INTO items VALUES (1, 'a', 0, '{\"x\": [1]}'), (2, 'b', 0, NULL)"
    )
    source = await opened(source_for(pg))
    try:
        snapshot, _ = await read_until(source, lambda v: len(v) >= 2)
        await pg.execute(
            "INSERT INTO items VALUES (3, 'c', 0, NULL)",
            "UPDATE items SET name = 'a2', version = 1 WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
        )
        changes, batches = await read_until(source, lambda v: len(v) >= 3)
    finally:
        await source.aclose()
    assert [("r", 1), ("r", 2)] == sorted((v["op"], v["after"]["id"]) for v in snapshot)
    assert {"id": 1, "name": "a", "version": 0, "doc": {"x": [1]}} == snapshot[0]["after"]
    assert ["c", "u", "d"] == [v["op"] for v in changes]
    assert {"id": 1, "name": "a2", "version": 1, "doc": {"x": [1]}} == changes[1]["after"]
    assert ({"id": 2}, None) == (changes[2]["before"], changes[2]["after"])
    source_info = changes[0]["source"]
    assert ("public", "items", False) == (
        source_info["schema"],
        source_info["table"],
        source_info["snapshot"],
    )
    assert all(isinstance(source_info[k], int) for k in ("lsn", "txId", "ts_ms"))
    keys = [key for batch in batches for key in batch.keys or []]
    assert [{"id": 3}, {"id": 1}, {"id": 2}] == keys


def check_history(events: list[Any]) -> dict[int, int]:
    """Each key's versions arrive in order with no gap and no double; return the final state."""
    state: dict[int, int] = {}
    deleted: set[int] = set()
    for event in events:
        op, row = event["op"], event["after"] or event["before"]
        key = row["id"]
        assert key not in deleted, f"event after the delete of {key}: {event}"
        if op == "d":
            state.pop(key)
            deleted.add(key)
        elif op in ("r", "c"):
            assert key not in state, f"a double: {event}"
            state[key] = row["version"]
        else:
            assert state[key] + 1 == row["version"], f"a gap or a double: {event}"
            state[key] = row["version"]
    return state


async def read_to_state(
    source: PostgresCDCSource, events: list[Any], final: dict[int, int], within: float = 30.0
) -> dict[int, int]:
    """Read on until the events replay to ``final`` (bounded); return what they replay to."""
    state = check_history(events)
    with anyio.fail_after(within):
        while state != final:
            batch = await source.read(500)
            assert batch is not None
            events.extend(batch.values)
            await source.committed({source.partition: batch.end})
            state = check_history(events)
    return state


async def table_state(pg: PgHelper) -> dict[int, int]:
    return {row["id"]: row["version"] for row in await pg.fetch("SELECT id, version FROM items")}


async def test_handover_under_a_concurrent_writer(pg: PgHelper) -> None:
    """Snapshot and stream taken while writers run: no change lost, none seen twice."""
    await pg.execute(*SETUP, "INSERT INTO items SELECT i, 'x', 0 FROM generate_series(0, 499) i")
    stop = anyio.Event()
    source = source_for(pg)
    events: list[Any] = []
    try:
        async with anyio.create_task_group() as tg:
            await start_writers(pg.dsn, stop, tg, 500)
            await anyio.sleep(0.1)
            await opened(source)
            more, _ = await read_until(source, lambda v: len(v) >= 3_000, within=60, commit=True)
            events.extend(more)
            stop.set()
        final = await table_state(pg)
        assert final == await read_to_state(source, events, final)
    finally:
        await source.aclose()
    ops = {event["op"] for event in events}
    assert {"r", "c", "u", "d"} == ops


async def test_resume_inside_a_large_transaction(pg: PgHelper) -> None:
    """A checkpoint inside a 3,000-row transaction resumes right after it: no loss, no repeat."""
    await pg.execute(*SETUP)
    source = await opened(source_for(pg))
    try:
        first = await source.read(500)
        assert first is not None
        assert [] == first.values  # the empty snapshot ends
        await pg.execute("INSERT INTO items SELECT i, 'big', 0 FROM generate_series(1, 3000) i")
        values, batches = await read_until(source, lambda v: len(v) >= 1_000, max_records=500)
        assert all(len(batch.values) <= 500 for batch in batches)
        checkpoint = batches[1].end  # two batches done, inside the transaction
        done = len(batches[0]) + len(batches[1])
        await source.committed({source.partition: checkpoint})
    finally:
        await source.aclose()
    resumed = await opened(source_for(pg), checkpoint)
    try:
        rest, _ = await read_until(resumed, lambda v: len(v) >= 3_000 - done, max_records=700)
    finally:
        await resumed.aclose()
    ids = [v["after"]["id"] for v in values[:done] + rest]
    assert list(range(1, 3001)) == ids


async def test_the_slot_is_advanced_only_to_checkpoints(pg: PgHelper) -> None:
    """Reading moves nothing; a checkpoint after a transaction moves the slot to its end."""
    await pg.execute(*SETUP)
    source = await opened(source_for(pg))
    slot_lsn = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's1'"
    try:
        created = (await pg.fetch(slot_lsn))[0][0]
        await source.read(10)  # the empty snapshot
        await pg.execute(
            "INSERT INTO items VALUES (1, 'a', 0)", "INSERT INTO items VALUES (2, 'b', 0)"
        )
        _, batches = await read_until(source, lambda v: len(v) >= 2)
        await read_until(source, lambda v: True)  # another peek: still nothing confirmed
        assert created == (await pg.fetch(slot_lsn))[0][0]
        await source.committed({source.partition: batches[-1].end})
    finally:
        await source.aclose()
    assert created != (await pg.fetch(slot_lsn))[0][0]


async def test_a_dropped_slot_is_a_named_error(pg: PgHelper) -> None:
    """Resuming from a streaming checkpoint whose slot is gone stops with ReplicationSlotError."""
    await pg.execute(*SETUP)
    source = await opened(source_for(pg))
    try:
        ended = await source.read(10)  # the empty snapshot ends at the stream's start
        assert ended is not None
        position = ended.end
    finally:
        await source.aclose()
    await pg.execute("SELECT pg_drop_replication_slot('s1')")
    with pytest.raises(ReplicationSlotError) as caught:
        await opened(source_for(pg), position)
    assert "dropped" == caught.value.problem


async def test_a_slot_moved_past_the_checkpoint_is_a_named_error(pg: PgHelper) -> None:
    """Someone advanced the slot beyond the checkpoint: the gap stops the run."""
    await pg.execute(*SETUP)
    source = await opened(source_for(pg))
    try:
        ended = await source.read(10)  # the empty snapshot ends at the stream's start
        assert ended is not None
        position = ended.end
    finally:
        await source.aclose()
    await pg.execute(
        "INSERT INTO items VALUES (1, 'a', 0)",
        "SELECT pg_replication_slot_advance('s1', pg_current_wal_lsn())",
    )
    with pytest.raises(ReplicationSlotError) as caught:
        await opened(source_for(pg), position)
    assert "ahead" == caught.value.problem


async def test_an_added_column_flows_through(pg: PgHelper) -> None:
    """After ALTER TABLE ADD COLUMN the change events carry the new column."""
    await pg.execute(*SETUP)
    source = await opened(source_for(pg))
    try:
        await source.read(10)
        await pg.execute(
            "INSERT INTO items VALUES (1, 'a', 0)",
            "ALTER TABLE items ADD COLUMN price numeric",
            "INSERT INTO items VALUES (2, 'b', 0, NULL, 9.50)",
        )
        values, _ = await read_until(source, lambda v: len(v) >= 2)
    finally:
        await source.aclose()
    assert "price" not in values[0]["after"]
    assert "9.50" == values[1]["after"]["price"]


async def test_a_missing_publication_is_a_config_error(pg: PgHelper) -> None:
    """Opening without the publication names it."""
    with pytest.raises(ConfigError, match="CREATE PUBLICATION"):
        await opened(source_for(pg))


async def test_a_lost_connection_resumes_after_the_last_change(
    pg: PgHelper, caplog: pytest.LogCaptureFixture
) -> None:
    """The server drops the source's connection mid-stream: it reconnects, nothing is lost."""
    await pg.execute(*SETUP)
    source = await opened(source_for(pg, name="cdc_under_test"))
    try:
        await source.read(10)  # the empty snapshot
        await pg.execute("INSERT INTO items SELECT i, 'a', 0 FROM generate_series(1, 100) i")
        first, _ = await read_until(source, lambda v: len(v) >= 100)
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'cdc_under_test'",
            "INSERT INTO items SELECT i, 'b', 0 FROM generate_series(101, 200) i",
        )
        rest, _ = await read_until(source, lambda v: len(v) >= 100)
    finally:
        await source.aclose()
    assert list(range(1, 201)) == [v["after"]["id"] for v in first + rest]
    assert "reconnecting to the server (attempt 1)" in caplog.text


async def invalidate_slots(pg: PgHelper) -> None:
    """Make the server drop WAL the slots still need (max_slot_wal_keep_size), then reset it."""
    await pg.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'", "SELECT pg_reload_conf()")
    try:
        for i in range(10):
            await pg.execute(
                f"INSERT INTO items VALUES ({1000 + i}, 'w', 0)",
                "SELECT pg_switch_wal()",
                "CHECKPOINT",
            )
            status = await pg.fetch("SELECT wal_status FROM pg_replication_slots")
            if status and all(row[0] == "lost" for row in status):
                return
        raise AssertionError(f"the slots were not invalidated: {status}")
    finally:
        await pg.execute("ALTER SYSTEM RESET max_slot_wal_keep_size", "SELECT pg_reload_conf()")


async def test_a_slot_that_lost_its_wal_is_a_named_error(pg: PgHelper) -> None:
    """The server removed WAL the slot needed: reading and resuming stop with the named error."""
    await pg.execute(*SETUP)
    source = await opened(source_for(pg))
    try:
        ended = await source.read(10)
        assert ended is not None
        await invalidate_slots(pg)
        with pytest.raises(ReplicationSlotError) as reading:
            await source.read(10)
    finally:
        await source.aclose()
    with pytest.raises(ReplicationSlotError) as resuming:
        await opened(source_for(pg), ended.end)
    assert ("lost", "lost") == (reading.value.problem, resuming.value.problem)
