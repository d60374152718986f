"""Stages on keyed state (the built-in Dedupe, Window and Saga on a store, a custom stage) in
a Kafka changelog."""

from __future__ import annotations

import collections
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

import anyio.lowlevel

import riprap
from riprap.connectors.kafka import KafkaChangelog, KafkaCheckpoints, KafkaSource, json_value
from riprap.connectors.memory import MemorySink
from riprap.stages.dedupe import Dedupe
from riprap.stages.saga import Saga, SagaError, SagaStep
from riprap.stages.window import Aggregate, Window, tumbling
from riprap.state import KeyedState, MemoryStore

from .conftest import FAST_GROUP
from .test_changelog import run_until

if TYPE_CHECKING:
    from collections.abc import Callable

    from riprap.lowlevel import Emit

    from .conftest import KafkaHelper

pytestmark = [pytest.mark.kafka]


class RunningCount:
    """A custom stage whose whole state is keyed: it says so with ``keyed_state``."""

    step_id = "count"

    def __init__(self) -> None:
        self.keyed_state = KeyedState(MemoryStore())

    async def open(self, context: riprap.StageContext) -> None:
        self.keyed_state.open(context, self.step_id)

    async def process(self, batch: riprap.Batch, emit: Emit) -> None:
        out = []
        for index, value in enumerate(batch.items):
            state = self.keyed_state.state(batch, index)
            seen: int = state.get(0) + 1
            state.set(seen)
            out.append({**value, "seen": seen})
        await emit(riprap.Batch(out, batch.ack, batch.origin))

    async def finish(self, emit: Emit) -> None:
        """Nothing is held back."""

    def snapshot(self) -> Any:
        return self.keyed_state.snapshot()

    def restore(self, state: Any) -> None:
        self.keyed_state.restore(state)


def build(kafka: KafkaHelper, topic: str, group: str, sink: MemorySink) -> riprap.Pipeline:
    source = KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
    )
    return (
        riprap.Pipeline(
            "orders",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.1,
            changelog=KafkaChangelog(kafka.bootstrap, topic=f"{topic}-changelog"),
        )
        .source(source)
        .map("decode", json_value)
        .stage(Dedupe("once", key="id", ttl=3600, store=MemoryStore()))
        .stage(RunningCount())
        .sink(sink)
    )


def deliveries(ids: range) -> list[tuple[bytes | None, bytes, list[Any]]]:
    """Each id delivered twice, keyed by its customer (so both copies share a partition)."""
    return [(f"c{i % 5}".encode(), orjson.dumps({"id": i}), []) for i in ids for _ in range(2)]


@pytest.mark.anyio
async def test_a_dedupe_and_a_custom_stage_go_on_from_the_changelog(kafka: KafkaHelper) -> None:
    """KafkaCheckpoints accepts both stages; the next run, with fresh in-memory stores, drops
    the repeats of ids the first run let through and counts on from where it stopped."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(topic, deliveries(range(100)))
    first = MemorySink()
    await run_until(build(kafka, topic, group, first), first, 100)
    await kafka.produce(topic, deliveries(range(50, 150)))  # 50..99 again, then 50 new ids
    second = MemorySink()
    await run_until(build(kafka, topic, group, second), second, 50)
    ids = [value["id"] for value in first.values + second.values]
    assert list(range(150)) == sorted(ids)
    last = {}
    for value in first.values + second.values:
        last[value["id"] % 5] = value["seen"]
    assert dict.fromkeys(range(5), 30) == last


def windowed(kafka: KafkaHelper, topic: str, group: str, sink: MemorySink) -> riprap.Pipeline:
    return member(kafka, topic, group, sink)[0]


def member(
    kafka: KafkaHelper, topic: str, group: str, sink: MemorySink
) -> tuple[riprap.Pipeline, KafkaSource]:
    """A per-user count of clicks in windows of 10 s, and its source (a group member)."""
    source = KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
    )
    count: Aggregate[Any, int, int] = Aggregate(init=lambda: 0, add=lambda n, _value: n + 1)
    pipeline = (
        riprap.Pipeline(
            "clicks",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.1,
            changelog=KafkaChangelog(kafka.bootstrap, topic=f"{topic}-changelog"),
        )
        .source(source)
        .map("decode", json_value)
        .stage(
            Window(
                "per-10s",
                window=tumbling(10),
                key=lambda click: click["user"],
                time=lambda click: click["t"],
                aggregate=count,
                store=MemoryStore(),
            )
        )
        .sink(sink)
    )
    return pipeline, source


def clicks(times: range, users: range = range(5)) -> list[tuple[bytes | None, bytes, list[Any]]]:
    """One click per user per second, keyed by user."""
    return [
        (f"u{user}".encode(), orjson.dumps({"user": f"u{user}", "t": t}), [])
        for t in times
        for user in users
    ]


@pytest.mark.anyio
async def test_a_window_open_across_two_runs_counts_each_click_once(kafka: KafkaHelper) -> None:
    """Windows half full when the first run stops are completed by the next, whose fresh
    in-memory store restores them from the changelog."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(topic, clicks(range(15)))  # [10, 20) holds 5 s of each user
    first = MemorySink()
    await run_until(windowed(kafka, topic, group, first), first, 5)
    await kafka.produce(topic, clicks(range(15, 40)))
    second = MemorySink()
    closed = {(f"u{user}", 20) for user in range(5)}
    async with windowed(kafka, topic, group, second).open() as running:
        for _ in range(3_000):  # until every user's [20, 30) closed (60 s at most)
            if closed <= {(v["key"], v["start"]) for v in second.values}:
                break
            await anyio.sleep(0.02)
        running.stop()
    last: dict[tuple[str, int], int] = {}
    for result in first.values + second.values:
        last[(result["key"], result["start"])] = result["value"]
    assert {(f"u{u}", start): 10 for u in range(5) for start in (0, 10, 20)} == {
        window: n for window, n in last.items() if window[1] < 30
    }


async def wait_for(done: Callable[[], bool], what: str) -> None:
    """Poll ``done`` (20 ms apart, 60 s at most)."""
    for _ in range(3_000):
        if done():
            return
        await anyio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.anyio
async def test_windows_follow_their_partitions_to_a_second_member_and_back(
    kafka: KafkaHelper,
) -> None:
    """A second member joins (new users arrive on its partitions), then leaves: the first
    takes its windows back and closes them by the partitions' time (those users are quiet by
    then); every window counts each click once."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    a, b = MemorySink(), MemorySink()

    def closed(users: range, start: int) -> Callable[[], bool]:
        def done() -> bool:
            seen = {(v["key"], v["start"]) for v in a.values + b.values}
            return {(f"u{user}", start) for user in users} <= seen

        return done

    def recounted() -> bool:
        fifteen = {(v["key"], v["start"]) for v in a.values if v["value"] == 15}
        return {(f"u{user}", 20) for user in range(5, 10)} <= fifteen

    await kafka.produce(topic, clicks(range(15)))
    one, one_source = member(kafka, topic, group, a)
    two, two_source = member(kafka, topic, group, b)
    async with one.open() as first:
        await wait_for(closed(range(5), 0), "[0, 10) of users 0-4")
        async with two.open() as second:
            await wait_for(
                lambda: bool(two_source.lag()) and len(one_source.lag()) < 3,
                "the partitions shared by both members",
            )
            await kafka.produce(topic, clicks(range(15, 30), users=range(10)))
            await wait_for(closed(range(5), 10), "[10, 20) of users 0-4")
            second.stop()
        # Users 5-9 add five clicks to [20, 30), still open at their partitions' time (29),
        # then go quiet: only the partitions' time closes those windows, which the first
        # member must find in the state the second one left.
        await kafka.produce(topic, clicks(range(25, 30), users=range(5, 10)))
        await kafka.produce(topic, clicks(range(30, 45)))
        await wait_for(closed(range(5), 30), "[30, 40) of users 0-4")
        await wait_for(recounted, "[20, 30) of users 5-9 with their last clicks")
        first.stop()
    assert b.values, "the second member closed windows of its own"
    last: dict[tuple[str, int], int] = {}
    for result in b.values + a.values:  # the second member stopped first
        last[(result["key"], result["start"])] = result["value"]
    expected = {(f"u{u}", start): 10 for u in range(5) for start in (0, 10, 20, 30)}
    expected |= {(f"u{u}", 10): 5 for u in range(5, 10)}  # their clicks start at 15
    expected |= {(f"u{u}", 20): 15 for u in range(5, 10)}
    assert expected == {window: n for window, n in last.items() if window[1] < 40}


class Ledger:
    """Counts calls by idempotency key; ``charge`` fails with a bug for one order, once."""

    def __init__(self, broken: int | None) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.broken = broken

    async def reserve(self, order: dict[str, Any], key: str) -> str:
        self.calls[key] += 1
        await anyio.lowlevel.checkpoint()
        return f"r{order['id']}"

    async def charge(self, order: dict[str, Any], key: str) -> str:
        self.calls[key] += 1
        await anyio.lowlevel.checkpoint()
        if order["id"] == self.broken:
            raise RuntimeError("payments bug")
        return f"c{order['id']}"


def orders(
    kafka: KafkaHelper, topic: str, group: str, ledger: Ledger, sink: MemorySink
) -> riprap.Pipeline:
    source = KafkaSource(
        topic, bootstrap_servers=kafka.bootstrap, group_id=group, consumer_options=FAST_GROUP
    )
    saga = Saga(
        "order",
        [SagaStep("reserve", ledger.reserve), SagaStep("charge", ledger.charge)],
        key=lambda order: order["id"],
        store=MemoryStore(),
    )
    return (
        riprap.Pipeline(
            "orders",
            checkpoint=KafkaCheckpoints(source),
            checkpoint_interval=0.05,
            batch_size=10,
            changelog=KafkaChangelog(kafka.bootstrap, topic=f"{topic}-changelog"),
        )
        .source(source)
        .map("decode", json_value)
        .stage(saga)
        .sink(sink)
    )


@pytest.mark.anyio
async def test_a_saga_stopped_mid_way_resumes_from_the_log_in_the_changelog(
    kafka: KafkaHelper,
) -> None:
    """A bug in a step stops the run after the saga's first step: the next run, with a fresh
    in-memory store, finds the step done in the changelog and does not call it again."""
    topic = await kafka.create_topic(3)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(
        topic, [(f"c{i % 4}".encode(), orjson.dumps({"id": i}), []) for i in range(40)]
    )
    first = Ledger(broken=25)
    with pytest.raises(SagaError, match="payments bug"):
        await orders(kafka, topic, group, first, MemorySink()).run()
    assert 1 == first.calls["25:reserve"]
    second = Ledger(broken=None)
    charges = {f"{i}:charge" for i in range(40)}
    async with orders(kafka, topic, group, second, MemorySink()).open() as running:
        await wait_for(
            lambda: "25:charge" in second.calls and charges <= {*first.calls, *second.calls},
            "every order charged",
        )
        running.stop()
    calls = first.calls + second.calls
    assert 0 == second.calls["25:reserve"], "the logged step was called again"
    assert 1 == second.calls["25:charge"]
    assert {f"{i}:{step}" for i in range(40) for step in ("reserve", "charge")} == set(calls)
