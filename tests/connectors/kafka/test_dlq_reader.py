"""Dead letters read back from a topic: the exact inverse of KafkaDeadLetters, bounded reads,
and the replay source's positions."""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("aiokafka")

from riprap import DataError, Source
from riprap.connectors.kafka import (
    HEADER_PREFIX,
    KafkaDeadLetters,
    KafkaDeadLetterSource,
    iter_kafka_dead_letters,
    letter_from_message,
)
from riprap.connectors.kafka._deadletters import letter_headers, payload_bytes
from riprap.deadletters import DeadLetterFilter
from tests._sources import assert_cut_at_the_limit, read_to_end, stalled_at_the_bound
from tests.engine.dlq._letters import make_letter

if TYPE_CHECKING:
    from riprap import SourceBatch
    from riprap.deadletters import DeadLetter

    from .conftest import KafkaHelper

pytestmark = pytest.mark.anyio


def assorted_letters(count: int) -> list[DeadLetter]:
    """Letters with UTF-8, binary and object values, with and without keys, text headers."""
    values: list[Any] = [b'{"order": 1}', b"\xff\x00\xfe", {"order": [1, 2]}, None, "text"]
    return [
        make_letter(
            100 + i,
            value=values[i % len(values)],
            key=None if i % 3 == 0 else (f"k{i}" if i % 3 == 1 else b"\x00k"),
            headers=(("content-type", b"application/json"), ("tenant", "acme"), ("n", i)),
            stage="parse" if i % 2 else "enrich",
            error=DataError("bad order") if i % 2 else TimeoutError("slow"),
        )
        for i in range(count)
    ]


async def produce_letters(kafka: KafkaHelper, topic: str, letters: list[DeadLetter]) -> None:
    """Write ``letters`` with the dead-letter sink, several writes (several batches)."""
    sink = KafkaDeadLetters(topic, bootstrap_servers=kafka.bootstrap)
    await sink.open()
    try:
        for start in range(0, len(letters), 7):
            await sink.write(letters[start : start + 7])
    finally:
        await sink.aclose()


async def read_letters(kafka: KafkaHelper, topic: str) -> list[DeadLetter]:
    """Every letter on ``topic`` (a bounded read)."""
    async with contextlib.aclosing(
        iter_kafka_dead_letters(topic, bootstrap_servers=kafka.bootstrap)
    ) as letters:
        return [letter async for letter in letters]


def test_message_round_trip_without_a_broker() -> None:
    """letter_from_message inverts what the sink produces, field for field."""
    for letter in assorted_letters(6):
        key = payload_bytes(letter.key, letter.key_encoding)
        value = payload_bytes(letter.value, letter.value_encoding)
        assert letter == letter_from_message(key, value, letter_headers(letter))


def test_original_headers_that_look_like_the_envelope_stay_original() -> None:
    """Headers before the envelope are the record's, whatever their names."""
    letter = make_letter(headers=((HEADER_PREFIX + "stage", b"upstream"), ("a", b"1")))
    headers = letter_headers(letter)
    assert letter == letter_from_message(b"order-1", b'{"order": 1}', headers)
    appended = [*headers, ("added-by-a-proxy", b"x")]
    assert [("riprap.error.stage", b"upstream"), ("a", b"1"), ("added-by-a-proxy", b"x")] == (
        letter_from_message(b"order-1", b"{}", appended).original_headers()
    )


def test_a_plain_message_is_not_a_dead_letter() -> None:
    """Without riprap.error.id the message is refused, and a malformed field is named."""
    with pytest.raises(ValueError, match=r"not a riprap dead letter: no riprap\.error\.id header"):
        letter_from_message(None, b"{}", [("content-type", b"json")])
    headers = [
        (name, b"many" if name.endswith(".attempts") else data)
        for name, data in letter_headers(make_letter())
    ]
    with pytest.raises(ValueError, match=r"header riprap\.error\.attempts is malformed"):
        letter_from_message(None, b"{}", headers)


@pytest.mark.kafka
async def test_letters_written_to_a_topic_read_back_equal(kafka: KafkaHelper) -> None:
    """Write with KafkaDeadLetters, read with iter_kafka_dead_letters: the same letters."""
    topic = await kafka.create_topic(1)
    letters = assorted_letters(40)
    await produce_letters(kafka, topic, letters)
    assert letters == await read_letters(kafka, topic)


@pytest.mark.kafka
async def test_a_read_covers_every_partition_to_its_end(kafka: KafkaHelper) -> None:
    """Letters spread over four partitions (some perhaps empty) are all read, each once."""
    topic = await kafka.create_topic(4)
    letters = [make_letter(i, key=f"k{i % 3}".encode()) for i in range(150)]
    await produce_letters(kafka, topic, letters)
    read = await read_letters(kafka, topic)
    assert letters == sorted(read, key=lambda letter: letter.offset or 0)


@pytest.mark.kafka
async def test_an_empty_topic_reads_nothing_and_a_missing_one_is_not_found(
    kafka: KafkaHelper,
) -> None:
    """An empty topic ends at once; a topic that does not exist is FileNotFoundError."""
    topic = await kafka.create_topic(2)
    assert [] == await read_letters(kafka, topic)
    with pytest.raises(FileNotFoundError, match="no such topic"):
        await read_letters(kafka, topic + "-missing")


@pytest.mark.kafka
async def test_a_foreign_message_names_partition_and_offset(kafka: KafkaHelper) -> None:
    """A message that is no dead letter stops the read with its position."""
    topic = await kafka.create_topic(1)
    await produce_letters(kafka, topic, [make_letter(1)])
    await kafka.produce(topic, [(None, b"hello", [])])
    with pytest.raises(ValueError, match=rf"topic '{topic}' partition 0 offset 1: not a riprap"):
        await read_letters(kafka, topic)


async def drain(source: KafkaDeadLetterSource, positions: dict[str, int]) -> list[SourceBatch]:
    """Open the source at ``positions`` and read it to the end, four records at a time."""
    return await read_to_end(source, 4, positions, pipeline="orders.replay")


@pytest.mark.kafka
async def test_source_positions_are_kafka_offsets(kafka: KafkaHelper) -> None:
    """The source yields the original records; resuming at an offset skips what came before."""
    topic = await kafka.create_topic(1)
    letters = [make_letter(i, value=f"v{i}".encode()) for i in range(10)]
    await produce_letters(kafka, topic, letters)
    source = KafkaDeadLetterSource(topic, bootstrap_servers=kafka.bootstrap)
    assert isinstance(source, Source)
    batches = await drain(source, {})
    partition = f"dlq:kafka:{topic}:0"
    assert {partition} == {batch.partition for batch in batches}
    assert [f"v{i}".encode() for i in range(10)] == [v for b in batches for v in b.values]
    assert [i for b in batches for i in range(b.start, b.end)] == list(range(10))
    assert max(len(b) for b in batches) <= 4
    assert (b"order-1", [("content-type", b"application/json")]) == (
        batches[0].keys[0] if batches[0].keys else None,
        batches[0].headers[0] if batches[0].headers else None,
    )
    resumed = await drain(source, {partition: 7})
    assert [b"v7", b"v8", b"v9"] == [v for b in resumed for v in b.values]


@pytest.mark.kafka
async def test_source_filter_passes_skipped_letters(kafka: KafkaHelper) -> None:
    """Rejected letters yield no records, but the positions move past them."""
    topic = await kafka.create_topic(1)
    stages = ["parse", *["enrich"] * 10, "parse"]
    await produce_letters(
        kafka, topic, [make_letter(i, value=i, stage=s) for i, s in enumerate(stages)]
    )
    source = KafkaDeadLetterSource(
        topic, bootstrap_servers=kafka.bootstrap, filter=DeadLetterFilter(stage="parse")
    )
    batches = await drain(source, {})
    assert [0, 11] == [v for b in batches for v in b.values]
    assert 12 == batches[-1].end
    assert all(a.end <= b.start for a, b in itertools.pairwise(batches))
    assert any(not b.values for b in batches)  # a stretch of enrich letters only


@pytest.mark.kafka
async def test_a_position_past_the_end_hands_out_nothing_earlier(kafka: KafkaHelper) -> None:
    """Resuming beyond the end (a recreated topic) never goes back to earlier offsets."""
    topic = await kafka.create_topic(1)
    await produce_letters(kafka, topic, [make_letter(i) for i in range(3)])
    source = KafkaDeadLetterSource(topic, bootstrap_servers=kafka.bootstrap)
    assert [] == await drain(source, {f"dlq:kafka:{topic}:0": 50})


KIB = 1024


@pytest.mark.kafka
async def test_a_replay_ends_its_batches_at_the_byte_limit(kafka: KafkaHelper) -> None:
    """Twelve letters of 100 KiB, batches of at most 100 records and 250,000 bytes: each
    batch but the last reaches the limit with its last letter and not before, and says
    what it weighs; every letter comes once, in order."""
    topic = await kafka.create_topic(1)
    values = [f"{i:06d}".encode() + b"." * (100 * KIB - 6) for i in range(12)]
    await produce_letters(kafka, topic, [make_letter(i, value=v) for i, v in enumerate(values)])
    source = KafkaDeadLetterSource(topic, bootstrap_servers=kafka.bootstrap)
    batches = await read_to_end(source, 100, max_batch_bytes=250_000)
    assert values == [v for b in batches for v in b.values]
    assert_cut_at_the_limit(batches, 250_000, 100 * KIB)


@pytest.mark.kafka
async def test_without_a_byte_limit_a_replay_batch_is_cut_by_count_and_weighed(
    kafka: KafkaHelper,
) -> None:
    topic = await kafka.create_topic(1)
    letters = [make_letter(i, value=b"." * (100 * KIB)) for i in range(6)]
    await produce_letters(kafka, topic, letters)
    source = KafkaDeadLetterSource(topic, bootstrap_servers=kafka.bootstrap)
    batches = await read_to_end(source, 4)
    assert [4, 2] == [len(b) for b in batches]
    assert all(len(b) * 100 * KIB < b.nbytes for b in batches)


@pytest.mark.kafka
async def test_a_replay_reads_no_more_letters_than_its_bytes_in_flight(kafka: KafkaHelper) -> None:
    """40 letters of 100 KiB replayed behind a stalled sink, ``max_in_flight_bytes`` 1 MiB:
    reading stops with the batch that reaches 1 MiB (before, letters counted by records only
    and all 4 MiB were read); once the sink moves every letter arrives once, in order."""
    topic = await kafka.create_topic(1)
    values = [f"{i:06d}".encode() + b"." * (100 * KIB - 6) for i in range(40)]
    await produce_letters(kafka, topic, [make_letter(i, value=v) for i, v in enumerate(values)])
    source = KafkaDeadLetterSource(topic, bootstrap_servers=kafka.bootstrap)
    assert values == await stalled_at_the_bound("dlq-bytes", source, 40)
