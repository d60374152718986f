"""``riprap dlq replay --to-topic``: dead letters' original records back into a Kafka topic.

The letters come from a real failing pipeline whose source hands over keyed
records with headers and event times, as a Kafka source would; replays run the
``riprap`` command in a child process against the test broker.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.kafka import LETTER_ID_HEADER, topic_replay_pipeline
from riprap.connectors.memory import IterableSource, MemorySink
from tests.engine._subprocesses import (
    DEADLINE,
    checkpoint_position,
    spawn,
    wait_for_child,
)
from tests.engine.dlq._replay import (
    FAILED,
    ORDERS,
    bad_amounts,
    check,
    orders,
    records_in,
    riprap_dlq,
    strict_parse,
)

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import KafkaHelper

pytestmark = pytest.mark.kafka

EPOCH = 1_700_000_000.0
"""The event time of order 0; order ``i`` happened ``i`` seconds later."""

Original = tuple[bytes, bytes, tuple[tuple[str, bytes], ...], int]
"""A message as the test compares it: key, value, headers (without the letter id), ms."""


def original(i: int) -> Original:
    """The record the failing source handed over for order ``i``, as a message."""
    return (
        f"order-{i}".encode(),
        orders(ORDERS)[i],
        (("trace", f"t-{i}".encode()), ("raw", bytes([i % 256, 0xFF]))),
        round((EPOCH + i) * 1000),
    )


class KeyedOrders:
    """The orders as one partition of keyed records with headers, in batches of 100."""

    name = "orders"

    async def open(self, context: riprap.SourceContext) -> None:
        """Start at the checkpointed position (none: a fresh run)."""
        self._next = context.positions.get("orders", 0)

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        """The next batch, or ``None`` after the last order."""
        start, end = self._next, min(self._next + min(max_records, 100), ORDERS)
        if start >= end:
            return None
        self._next = end
        records = [original(i) for i in range(start, end)]
        return riprap.SourceBatch(
            "orders",
            [value for _, value, _, _ in records],
            start=start,
            keys=[key for key, _, _, _ in records],
            headers=[list(headers) for _, _, headers, _ in records],
            timestamps=[ms / 1000 for _, _, _, ms in records],
        )

    async def aclose(self) -> None:
        """Nothing to release."""


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A JSON Lines store holding the failing pipeline's dead letters."""
    path = tmp_path / "dead.jsonl"
    failing = (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(path),
            dlq_guard=None,  # a third of the orders fail, by design
        )
        .source(KeyedOrders())
        .map("parse", strict_parse)
        .map("check", check)
        .sink(MemorySink())
    )
    report = riprap.run(failing, handle_signals=False)
    assert len(FAILED) == sum(report.dead_lettered.values())
    return path


@pytest.fixture
def target(kafka: KafkaHelper) -> str:
    """A new 3-partition topic to replay into."""
    return anyio.run(kafka.create_topic, 3)


def letter_ids(store: Path) -> dict[int, str]:
    """The id of each stored letter, by order id."""
    return {
        orjson.loads(letter.original_value())["id"]: letter.id
        for letter in riprap.deadletters.read_dead_letters(store)
    }


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every message of ``topic``, read up to each partition's high watermark (bounded)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            messages: list[Any] = []
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                fetched = await consumer.getmany(timeout_ms=100, max_records=5000)
                for records in fetched.values():
                    messages.extend(records)
                ends = [consumer.highwater(tp) for tp in tps]
                positions = [await consumer.position(tp) for tp in tps]
                if not fetched and all(
                    end is not None and position >= end
                    for position, end in zip(positions, ends, strict=True)
                ):
                    return messages
            raise TimeoutError(f"topic {topic} not read to its end in {DEADLINE} s")
        finally:
            await consumer.stop()

    return anyio.run(read)


def by_letter(messages: list[Any]) -> Counter[str]:
    """How many messages carry each letter id."""
    return Counter(dict(message.headers)[LETTER_ID_HEADER].decode() for message in messages)


def as_original(message: Any) -> Original:
    """A produced message without its letter-id header, to compare with :func:`original`."""
    headers = tuple((n, v) for n, v in message.headers if n != LETTER_ID_HEADER)
    return (message.key, message.value, headers, message.timestamp)


def to_topic(store: Path, location: str, *options: str) -> str:
    """``riprap dlq replay STORE --to-topic LOCATION OPTIONS -q`` in the store's directory."""
    done = riprap_dlq(
        "replay", store.name, "--to-topic", location, *options, "-q", cwd=store.parent
    )
    assert 0 == done.returncode, done.stderr
    return done.stdout


def test_replay_to_a_topic_produces_each_original_record_once(
    store: Path, target: str, kafka: KafkaHelper
) -> None:
    """Every letter's key, value, headers and event time land once, marked with its id."""
    location = f"kafka://{kafka.bootstrap}/{target}"
    assert len(FAILED) == records_in(to_topic(store, location))
    messages = read_topic(kafka.bootstrap, target)
    assert sorted(original(i) for i in FAILED) == sorted(map(as_original, messages))
    ids = letter_ids(store)
    assert {ids[i]: 1 for i in FAILED} == by_letter(messages)
    for message in messages:  # each message carries the id of its own letter
        order = orjson.loads(message.value)["id"]
        assert ids[order] == dict(message.headers)[LETTER_ID_HEADER].decode()


def test_a_second_replay_to_the_topic_sends_nothing(
    store: Path, target: str, kafka: KafkaHelper
) -> None:
    """The replay's checkpoint (in the default file) makes a second run send nothing."""
    location = f"kafka://{kafka.bootstrap}/{target}"
    to_topic(store, location)
    assert (store.parent / f"{target}.replay-checkpoint.db").exists()
    assert 0 == records_in(to_topic(store, location))
    assert len(FAILED) == len(read_topic(kafka.bootstrap, target))


def test_a_filtered_replay_sends_only_matching_letters(
    store: Path, target: str, kafka: KafkaHelper
) -> None:
    """``--stage parse`` produces only that stage's letters; a later full replay the rest."""
    location = f"kafka://{kafka.bootstrap}/{target}"
    assert len(bad_amounts(ORDERS)) == records_in(to_topic(store, location, "--stage", "parse"))
    ids = letter_ids(store)
    assert {ids[i]: 1 for i in bad_amounts(ORDERS)} == by_letter(
        read_topic(kafka.bootstrap, target)
    )
    assert len(FAILED - bad_amounts(ORDERS)) == records_in(to_topic(store, location))
    assert {ids[i]: 1 for i in FAILED} == by_letter(read_topic(kafka.bootstrap, target))


def test_a_decoded_value_is_produced_as_json(
    tmp_path: Path, target: str, kafka: KafkaHelper
) -> None:
    """A letter of a step that got decoded objects is produced as the JSON it was stored as."""
    path = tmp_path / "dead.jsonl"
    failing = (
        riprap.Pipeline(
            "decoded",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(path),
        )
        .source(IterableSource("in", [{"id": 1, "qty": -1}]))
        .map("check", check)
        .sink(MemorySink())
    )
    riprap.run(failing, handle_signals=False)
    replay = topic_replay_pipeline(
        target,
        bootstrap_servers=kafka.bootstrap,
        checkpoint=riprap.checkpoints.SqliteCheckpoints(tmp_path / "ckpt.db"),
    ).source(riprap.deadletters.DeadLetterSource(path, id_header=LETTER_ID_HEADER))
    assert 1 == riprap.run(replay, handle_signals=False).records_in
    [message] = read_topic(kafka.bootstrap, target)
    assert {"id": 1, "qty": -1} == orjson.loads(message.value)


def test_to_topic_must_be_a_topic(store: Path) -> None:
    """``--to-topic`` names a Kafka topic; ``--checkpoint`` goes only with it."""
    done = riprap_dlq("replay", store.name, "--to-topic", "s3://bucket/p", cwd=store.parent)
    assert (2, True) == (done.returncode, "--to-topic" in done.stderr)
    (store.parent / "fix.py").write_text("")
    done = riprap_dlq(
        "replay", store.name, "--pipeline", "fix.py", "--checkpoint", "c.db", cwd=store.parent
    )
    assert (2, True) == (done.returncode, "--checkpoint" in done.stderr)


@pytest.mark.slow
def test_a_killed_replay_resumes_and_every_letter_is_there_once_by_id(
    store: Path, target: str, kafka: KafkaHelper
) -> None:
    """SIGKILL mid-way: the resumed replay sends only what follows the checkpoint.

    What the killed one produced after its last checkpoint is produced again
    (at-least-once), with the same letter id, so a consumer deduplicating by it
    sees every letter exactly once.
    """
    location = f"kafka://{kafka.bootstrap}/{target}"
    checkpoints = store.parent / f"{target}.replay-checkpoint.db"
    name, partition = f"dlq-to-{target}.replay", f"dlq:{os.path.abspath(store)}"
    command = [sys.executable, "-m", "riprap.cli", "dlq", "replay", store.name]
    command += ["--to-topic", location, "--rate", "40", "-q"]
    with spawn(command, store.parent, "first") as proc:
        wait_for_child(
            lambda: checkpoint_position(checkpoints, name, partition) >= 40,
            proc,
            "a checkpoint past 40 letters",
        )
        proc.send_signal(signal.SIGKILL)
        assert -signal.SIGKILL == proc.wait(timeout=DEADLINE)
    resumed_at = checkpoint_position(checkpoints, name, partition)
    assert 40 <= resumed_at < len(FAILED)
    assert len(FAILED) - resumed_at == records_in(to_topic(store, location))
    copies = by_letter(read_topic(kafka.bootstrap, target))
    stored = [letter.id for letter in riprap.deadletters.read_dead_letters(store)]
    assert set(stored) == set(copies)
    # Letters before the checkpoint were sent once; after it, by the killed run too, at most.
    assert dict.fromkeys(stored[:resumed_at], 1) == {i: copies[i] for i in stored[:resumed_at]}
    assert {1, 2} >= {copies[i] for i in stored[resumed_at:]}
