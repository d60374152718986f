"""End to end: Kafka -> steps -> Kafka with SQLite checkpoints and a dead-letter file."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

import riprap
import riprap.checkpoints
import riprap.connectors.memory
import riprap.deadletters
from riprap.connectors.kafka import KafkaSink, KafkaSource, json_value
from riprap.testing import wait_until

from .conftest import FAST_GROUP

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import KafkaHelper, Message

pytestmark = pytest.mark.anyio

DEADLINE = 90.0


def add_total(order: dict[str, Any]) -> dict[str, Any]:
    """The map step under test."""
    return {**order, "total": order["qty"] * 2}


def build(
    kafka: KafkaHelper, tmp_path: Path, source: str, out: str, group: str, **options: Any
) -> riprap.Pipeline:
    """Kafka -> decode -> add_total -> Kafka, checkpointed to SQLite."""
    return (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(tmp_path / "checkpoints.db"),
            checkpoint_interval=0.2,
            **options,
        )
        .source(
            KafkaSource(
                source,
                bootstrap_servers=kafka.bootstrap,
                group_id=group,
                consumer_options=FAST_GROUP,
            )
        )
        .map("decode", json_value)
        .map("add_total", add_total)
        .sink(KafkaSink(out, bootstrap_servers=kafka.bootstrap))
    )


async def wait_for_output(kafka: KafkaHelper, topic: str, count: int) -> list[Any]:
    """The output topic's messages once it holds ``count`` (bounded wait)."""
    deadline = time.monotonic() + DEADLINE
    messages: list[Any] = []
    for _ in range(200):
        messages = await kafka.read_all(topic, count, within=2.0)
        if len(messages) >= count or time.monotonic() > deadline:
            break
        await anyio.sleep(0.05)
    return messages


async def load_positions(tmp_path: Path, pipeline: str = "orders") -> dict[str, int]:
    """The positions of the pipeline's last checkpoint."""
    backend = riprap.checkpoints.SqliteCheckpoints(tmp_path / "checkpoints.db")
    try:
        checkpoint = await backend.load(pipeline)
    finally:
        await backend.aclose()
    assert checkpoint is not None
    return dict(checkpoint.positions)


@pytest.mark.kafka
async def test_every_record_arrives_once_and_offsets_match_the_checkpoint(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """20,000 records flow through once each; group offsets equal the checkpoint positions."""
    count = 20_000
    source, out = await kafka.create_topic(4), await kafka.create_topic(4)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(
        source,
        [(f"k{i}".encode(), orjson.dumps({"id": i, "qty": i % 7}), []) for i in range(count)],
    )
    async with build(kafka, tmp_path, source, out, group).open() as running:
        messages = await wait_for_output(kafka, out, count)
        running.stop()
    keys = Counter(m.key for m in messages)
    assert {f"k{i}".encode(): 1 for i in range(count)} == dict(keys)
    by_key = {m.key: orjson.loads(m.value) for m in messages}
    assert {"id": 12, "qty": 5, "total": 10} == by_key[b"k12"]
    positions = await load_positions(tmp_path)
    assert count == sum(positions.values())
    assert positions == await kafka.committed(source, group)


@pytest.mark.kafka
async def test_malformed_message_is_dead_lettered_and_the_run_goes_on(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """A message that is not JSON reaches the DLQ with its bytes and headers; the rest flow on."""
    source, out = await kafka.create_topic(4), await kafka.create_topic(4)
    bad = (b"bad", b'{"id": 7, "qty":', [("trace", b"abc"), ("origin", b"\xff\x00")])
    good: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = [
        (f"k{i}".encode(), orjson.dumps({"id": i, "qty": 1}), []) for i in range(99)
    ]
    await kafka.produce(source, [*good[:50], bad, *good[50:]])
    dlq = tmp_path / "dlq.jsonl"
    pipeline = build(
        kafka,
        tmp_path,
        source,
        out,
        f"g-{uuid.uuid4().hex}",
        dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
    )
    async with pipeline.open() as running:
        messages = await wait_for_output(kafka, out, 99)
        running.stop()
    assert {f"k{i}".encode() for i in range(99)} == {m.key for m in messages}
    letters = list(riprap.deadletters.read_dead_letters(dlq))
    assert 1 == len(letters)
    letter = letters[0]
    expected = (b"bad", b'{"id": 7, "qty":', [("trace", b"abc"), ("origin", b"\xff\x00")])
    actual = (letter.original_key(), letter.original_value(), list(letter.original_headers()))
    assert expected == actual
    assert ("decode_error", "decode") == (letter.reason, letter.stage)
    assert letter.partition is not None
    assert letter.partition.startswith(f"{source}:")


@pytest.mark.kafka
async def test_source_decoding_dead_letters_bad_values_and_keeps_the_rest_exact(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """``decode="json"``: big integers exact, a tombstone ``None``, a bad value dead-lettered.

    The bad value reaches the dead-letter store as consumed (bytes and headers),
    named by the source; every offset is checkpointed.
    """
    big = 123456789012345678901234567890
    source = await kafka.create_topic(1)
    messages = [
        (b"a", b'{"id": 1}', []),
        (b"b", b'{"id": %d}' % big, []),
        (b"bad", b'{"id": 3,', [("trace", b"abc"), ("origin", b"\xff\x00")]),
        (b"gone", None, []),
        (b"c", b'{"id": 5, "tags": ["x"]}', []),
    ]
    await kafka.produce(source, cast("list[Message]", messages))
    dlq = tmp_path / "dlq.jsonl"
    sink = riprap.connectors.memory.MemorySink()
    pipeline = (
        riprap.Pipeline(
            "decoded",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(tmp_path / "checkpoints.db"),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(dlq),
        )
        .source(
            KafkaSource(
                source,
                bootstrap_servers=kafka.bootstrap,
                group_id=f"g-{uuid.uuid4().hex}",
                consumer_options=FAST_GROUP,
                decode="json",
                name="orders-in",
            )
        )
        .sink(sink)
    )
    async with pipeline.open() as running:
        await wait_until(lambda: len(sink.values) >= 4, timeout=DEADLINE, what="4 values")
        running.stop()
        report = await running.wait()
    assert [{"id": 1}, {"id": big}, None, {"id": 5, "tags": ["x"]}] == sink.values
    letters = list(riprap.deadletters.read_dead_letters(dlq))
    assert 1 == len(letters)
    letter = letters[0]
    original = (letter.original_key(), letter.original_value(), list(letter.original_headers()))
    assert (b"bad", b'{"id": 3,', [("trace", b"abc"), ("origin", b"\xff\x00")]) == original
    assert ("decode_error", "orders-in", f"{source}:0") == (
        letter.reason,
        letter.stage,
        letter.partition,
    )
    assert 5 == report.records_in
    assert {f"{source}:0": 5} == await load_positions(tmp_path, "decoded")


def test_source_decoding_names_an_unknown_format() -> None:
    """``decode`` takes ``"json"`` or ``None``; anything else is a ConfigError naming it."""
    with pytest.raises(riprap.ConfigError, match=r"^decode: expected 'json' or None, not 'xml'"):
        KafkaSource("t", bootstrap_servers="127.0.0.1:1", group_id="g", decode="xml")  # type: ignore[arg-type]


@pytest.mark.kafka
async def test_kafka_checkpoints_keep_positions_in_the_group_offsets(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """With KafkaCheckpoints the group offsets are the checkpoint, and a restart resumes."""
    from riprap.connectors.kafka import KafkaCheckpoints

    source_topic, out = await kafka.create_topic(2), await kafka.create_topic(2)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(
        source_topic,
        [(f"k{i}".encode(), orjson.dumps({"id": i, "qty": 1}), []) for i in range(300)],
    )

    def build_kafka_checkpointed() -> riprap.Pipeline:
        source = KafkaSource(
            source_topic,
            bootstrap_servers=kafka.bootstrap,
            group_id=group,
            consumer_options=FAST_GROUP,
        )
        return (
            riprap.Pipeline(
                "stateless", checkpoint=KafkaCheckpoints(source), checkpoint_interval=0.2
            )
            .source(source)
            .map("decode", json_value)
            .sink(KafkaSink(out, bootstrap_servers=kafka.bootstrap))
        )

    async with build_kafka_checkpointed().open() as running:
        await wait_for_output(kafka, out, 300)
        running.stop()
    committed = await kafka.committed(source_topic, group)
    assert 300 == sum(committed.values())
    await kafka.produce(
        source_topic, [(f"n{i}".encode(), orjson.dumps({"id": i, "qty": 1}), []) for i in range(20)]
    )
    async with build_kafka_checkpointed().open() as running:
        messages = await wait_for_output(kafka, out, 320)
        running.stop()
        report = await running.wait()
    assert 20 == report.records_in
    assert 320 == len({m.key for m in messages})


def test_kafka_checkpoints_refuse_stateful_pipelines() -> None:
    """A pipeline with a stateful stage cannot keep its checkpoints in group offsets."""
    from riprap.connectors.kafka import KafkaCheckpoints
    from riprap.stages.dedupe import Dedupe

    source = KafkaSource("t", bootstrap_servers="127.0.0.1:1", group_id="g")
    p = (
        riprap.Pipeline("stateful", checkpoint=KafkaCheckpoints(source))
        .source(source)
        .stage(Dedupe("dedupe", key="id", max_keys=10))
        .sink(riprap.connectors.memory.MemorySink())
    )
    with pytest.raises(riprap.ConfigError, match=r"^checkpoint: KafkaCheckpoints keeps only"):
        riprap.run(p, handle_signals=False)


@pytest.mark.kafka
async def test_dead_letter_topic_keeps_original_bytes_and_error_headers(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """A malformed message lands on the DLQ topic as consumed, with riprap.error.* headers."""
    from riprap.connectors.kafka import HEADER_PREFIX, KafkaDeadLetters

    source, out, dead = [await kafka.create_topic(1) for _ in range(3)]
    bad = (b"bad", b'{"qty":', [("origin", b"\xff\x00")])
    await kafka.produce(source, [(b"ok", orjson.dumps({"id": 1, "qty": 2}), []), bad])
    pipeline = build(
        kafka,
        tmp_path,
        source,
        out,
        f"g-{uuid.uuid4().hex}",
        dead_letter=KafkaDeadLetters(dead, bootstrap_servers=kafka.bootstrap),
    )
    async with pipeline.open() as running:
        await wait_for_output(kafka, out, 1)
        letters = await wait_for_output(kafka, dead, 1)
        running.stop()
    assert 1 == len(letters)
    letter = letters[0]
    headers = dict(letter.headers)
    assert (b"bad", b'{"qty":') == (letter.key, letter.value)
    assert b"\xff\x00" == headers["origin"]
    assert b"decode_error" == headers[HEADER_PREFIX + "reason"]
    assert b"decode" == headers[HEADER_PREFIX + "stage"]
    assert f"{source}:0".encode() == headers[HEADER_PREFIX + "partition"]


@pytest.mark.kafka
async def test_two_members_share_partitions_and_a_rebalance_loses_nothing(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """A second member joining drains and commits revoked partitions: no loss, no duplicate."""
    source, out = await kafka.create_topic(4), await kafka.create_topic(4)
    group = f"g-{uuid.uuid4().hex}"
    first_half: list[Message] = [
        (f"a{i}".encode(), orjson.dumps({"id": i, "qty": 1}), []) for i in range(4_000)
    ]
    second_half: list[Message] = [
        (f"b{i}".encode(), orjson.dumps({"id": i, "qty": 1}), []) for i in range(4_000)
    ]
    await kafka.produce(source, first_half)
    # No periodic checkpoint before the rebalance: only the drain can commit A's work.
    member_a = build(kafka, tmp_path / "a", source, out, group).with_options(
        checkpoint_interval=60.0
    )
    member_b = build(kafka, tmp_path / "b", source, out, group).with_options(
        checkpoint_interval=60.0
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with member_a.open() as running_a:
        await wait_for_output(kafka, out, 1_000)
        async with member_b.open() as running_b:
            await kafka.produce(source, second_half)
            messages = await wait_for_output(kafka, out, 8_000)
            stats_b = running_b.statistics()
            running_b.stop()
        running_a.stop()
    keys = Counter(m.key for m in messages)
    expected = {key for key, _, _ in first_half + second_half}
    assert expected == set(keys)
    assert [] == [key for key, seen in keys.items() if seen > 1]
    assert stats_b.records_in > 0
