"""Keyed state in a Kafka changelog: restored by the next run, by another member, after damage."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

import riprap
from riprap.connectors.kafka import KafkaChangelog, KafkaCheckpoints, KafkaSource
from riprap.connectors.memory import MemorySink
from riprap.state import SqliteStore, State, StateStoreError

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from .conftest import KafkaHelper

pytestmark = [pytest.mark.kafka]

DEADLINE = 60.0
WORKER = Path(__file__).with_name("_changelog_worker.py")


def count(value: bytes, state: State) -> tuple[Any, int]:
    """A keyed running count: the record's key and how many records of it so far."""
    seen: int = state.get(0) + 1
    state.set(seen)
    return state.key, seen


def build(
    kafka: KafkaHelper, topic: str, group: str, sink: MemorySink, **options: Any
) -> riprap.Pipeline:
    source = KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
    )
    return (
        riprap.Pipeline(
            "counts",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.1,
            changelog=KafkaChangelog(kafka.bootstrap, topic=f"{topic}-changelog", **options),
        )
        .source(source)
        .map("count", count, state=True)
        .sink(sink)
    )


def messages(keys: int, start: int, stop: int) -> list[tuple[bytes | None, bytes, list[Any]]]:
    return [(f"k{i % keys}".encode(), orjson.dumps({"i": i}), []) for i in range(start, stop)]


async def run_until(pipeline: riprap.Pipeline, sink: MemorySink, count: int) -> None:
    """Run ``pipeline`` until ``sink`` holds ``count`` values, then stop it gracefully."""
    deadline = time.monotonic() + DEADLINE
    async with pipeline.open() as running:
        for _ in range(10_000):
            if len(sink.values) >= count or time.monotonic() > deadline:
                break
            await anyio.sleep(0.02)
        running.stop()
    assert len(sink.values) >= count, f"{len(sink.values)} of {count} arrived"


@pytest.mark.anyio
async def test_a_second_run_goes_on_from_the_state_in_the_changelog(kafka: KafkaHelper) -> None:
    """Counts continue across runs: the state comes back from the changelog, not a checkpoint."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(topic, messages(7, 0, 210))
    first = MemorySink()
    await run_until(build(kafka, topic, group, first), first, 210)
    await kafka.produce(topic, messages(7, 210, 280))
    second = MemorySink()
    await run_until(build(kafka, topic, group, second), second, 70)
    finals = dict(second.values)
    assert {f"k{k}".encode(): 40 for k in range(7)} == finals
    assert 70 == len(second.values)  # nothing before the committed offsets again


class PositionsNowhere:
    """A checkpoint backend whose saves fail: as if each run died before its offsets commit."""

    supports_state = False

    async def claim(self, pipeline: str, owner: str) -> riprap.checkpoints.Claim:
        return riprap.checkpoints.Claim(epoch=1, owner=owner, checkpoint=None)

    async def save(self, checkpoint: riprap.checkpoints.Checkpoint) -> None:
        """Nothing is kept: the changelog was committed just before, the offsets never are."""
        raise OSError("the store is gone")

    async def load(self, pipeline: str) -> riprap.checkpoints.Checkpoint | None:
        return None

    async def aclose(self) -> None:
        """Nothing to close."""


@pytest.mark.anyio
async def test_a_commit_logged_but_never_saved_resumes_at_its_mark(kafka: KafkaHelper) -> None:
    """The changelog is ahead of the group (a crash between the two): no record counts twice."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(topic, messages(5, 0, 100))
    first = MemorySink()
    pipeline = build(kafka, topic, group, first).with_options(checkpoint=PositionsNowhere())
    with pytest.raises(OSError, match="the store is gone"):
        await run_until(pipeline, first, 100)
    assert {} == await kafka.committed(topic, group, 3)
    await kafka.produce(topic, messages(5, 100, 150))
    second = MemorySink()
    await run_until(build(kafka, topic, group, second), second, 50)
    assert 50 == len(second.values)  # the first 100 are done: the marks say so
    assert {f"k{k}".encode(): 30 for k in range(5)} == dict(second.values)


@pytest.mark.anyio
async def test_a_group_moved_past_the_changelog_is_refused_unless_accepted(
    kafka: KafkaHelper,
) -> None:
    """Offsets ahead of the last commit would lose state changes: the run stops, naming it."""
    topic = await kafka.create_topic(1)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(topic, messages(2, 0, 24))
    first = MemorySink()
    await run_until(build(kafka, topic, group, first), first, 24)
    await kafka.produce(topic, messages(2, 24, 30))
    await commit_offsets(kafka, topic, group, {0: 26})  # an operator skips two records
    refused = build(kafka, topic, group, MemorySink())
    with pytest.raises(StateStoreError, match=rf"'{topic}:0' was last committed at position 24"):
        with anyio.fail_after(DEADLINE):
            await refused.run()
    accepted = MemorySink()
    await run_until(build(kafka, topic, group, accepted, accept_behind=True), accepted, 4)
    assert [(b"k0", 13), (b"k1", 13), (b"k0", 14), (b"k1", 14)] == accepted.values


@pytest.mark.anyio
async def test_a_group_with_offsets_and_an_empty_changelog_is_refused(kafka: KafkaHelper) -> None:
    """A deleted changelog (or state added to a running group) is named, not started empty."""
    topic = await kafka.create_topic(1)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(topic, messages(2, 0, 4))
    await commit_offsets(kafka, topic, group, {0: 2})
    with pytest.raises(StateStoreError, match=rf"'{topic}:0' holds no commit.*resumes at 2"):
        with anyio.fail_after(DEADLINE):
            await build(kafka, topic, group, MemorySink()).run()


async def commit_offsets(
    kafka: KafkaHelper, topic: str, group: str, offsets: dict[int, int]
) -> None:
    """Commit ``offsets`` for ``group`` as an operator's tool would."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=FAST_GROUP["session_timeout_ms"],
        heartbeat_interval_ms=FAST_GROUP["heartbeat_interval_ms"],
    )
    consumer.subscribe([topic])
    await consumer.start()
    try:
        with anyio.fail_after(DEADLINE):
            while not consumer.assignment():  # a member of the group may commit
                await consumer.getmany(timeout_ms=50, max_records=1)
        await consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        )
    finally:
        await consumer.stop()


def test_workers_sharing_a_group_need_a_changelog_for_keyed_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group moves partitions among workers: without a changelog their state would not move."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(riprap.ConfigError, match=r"'window_count'.*keep the state in a changelog"):
        riprap.run_workers(f"{WORKER}:no_changelog", workers=2)


@pytest.mark.anyio
async def test_a_local_sqlite_copy_is_brought_up_to_date_or_rebuilt(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """A local copy reads only what it misses; one deleted or put back old still counts right."""
    topic = await kafka.create_topic(2)
    group = f"g-{uuid.uuid4().hex}"
    state = tmp_path / "state"
    produced = 0

    async def run_more(records: int) -> tuple[list[Any], KafkaChangelog]:
        nonlocal produced
        await kafka.produce(topic, messages(3, produced, produced + records))
        produced += records
        sink = MemorySink()
        changelog = KafkaChangelog(kafka.bootstrap, topic=f"{topic}-changelog")
        source = KafkaSource(
            topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
        )
        pipeline = (
            riprap.Pipeline(
                "counts",
                checkpoint=KafkaCheckpoints(source),
                checkpoint_interval=0.1,
                changelog=changelog,
            )
            .source(source)
            .map("count", count, state=SqliteStore(state))
            .sink(sink)
        )
        await run_until(pipeline, sink, records)
        return sink.values, changelog

    first, changelog = await run_more(30)
    assert {b"k0": 10, b"k1": 10, b"k2": 10} == dict(first)
    assert 0 == changelog.restored_records  # a new changelog: nothing to read
    shutil.copytree(state, tmp_path / "old")

    second, changelog = await run_more(30)
    assert {b"k0": 20, b"k1": 20, b"k2": 20} == dict(second)
    assert 0 == changelog.restored_records  # the local copy was up to date

    shutil.rmtree(state)
    third, changelog = await run_more(30)
    assert {b"k0": 30, b"k1": 30, b"k2": 30} == dict(third)
    assert changelog.restored_records > 0  # rebuilt from the whole changelog

    shutil.rmtree(state)
    shutil.copytree(tmp_path / "old", state)  # a copy two runs old
    fourth, changelog = await run_more(30)
    assert {b"k0": 40, b"k1": 40, b"k2": 40} == dict(fourth)


@pytest.mark.anyio
async def test_merged_kafka_sources_keep_their_keyed_state_in_one_changelog(
    kafka: KafkaHelper,
) -> None:
    """Two topics merged: each member's partitions are restored under their merged names."""
    from riprap.checkpoints import MemoryCheckpoints

    first, second = await kafka.create_topic(2), await kafka.create_topic(2)
    checkpoints = MemoryCheckpoints()  # kept across the two runs, as a file would be

    def build_merged(sink: MemorySink) -> riprap.Pipeline:
        def member(topic: str) -> KafkaSource:
            return KafkaSource(
                topic,
                bootstrap_servers=kafka.bootstrap,
                group_id=f"g-{topic}",
                consumer_options=FAST_GROUP,
            )

        return (
            riprap.Pipeline(
                "merged-counts",
                checkpoint=checkpoints,
                checkpoint_interval=0.1,
                changelog=KafkaChangelog(kafka.bootstrap, topic=f"{first}-changelog"),
            )
            .sources(a=member(first), b=member(second))
            .map("count", count, state=True)
            .sink(sink)
        )

    await kafka.produce(first, messages(2, 0, 20))
    await kafka.produce(second, messages(2, 0, 20))
    before = MemorySink()
    await run_until(build_merged(before), before, 40)
    await kafka.produce(first, messages(2, 20, 24))
    await kafka.produce(second, messages(2, 20, 24))
    after = MemorySink()
    await run_until(build_merged(after), after, 8)
    # Each key's count goes on from the first run's (10), in each member's partition.
    expected = sorted([(key, seen) for key in (b"k0", b"k1") for seen in (11, 12)] * 2)
    assert expected == sorted(after.values)


@pytest.mark.anyio
async def test_a_changelog_under_a_source_that_does_not_announce_partitions_is_refused(
    kafka: KafkaHelper,
) -> None:
    """State could not be restored before the records: the run stops, saying why."""
    from riprap.checkpoints import MemoryCheckpoints
    from riprap.connectors.memory import IterableSource

    pipeline = (
        riprap.Pipeline(
            "counts",
            checkpoint=MemoryCheckpoints(),
            changelog=KafkaChangelog(kafka.bootstrap, topic=f"t-{uuid.uuid4().hex[:8]}"),
        )
        .source(IterableSource("numbers", [1, 2], keys=["a", "b"]))
        .map("count", count, state=True)
        .sink(MemorySink())
    )
    with pytest.raises(riprap.ConfigError, match="announces the partitions it is given"):
        with anyio.fail_after(DEADLINE):
            await pipeline.run()
