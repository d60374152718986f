"""KafkaSink against the test broker: delivery, keys, headers, partitioning, errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

from aiokafka.errors import KafkaConnectionError, UnknownError
from aiokafka.partitioner import murmur2

from riprap import Batch, ConfigError, DataError, SourceBatch, TransientError
from riprap.connectors.json_codec import encode_json
from riprap.connectors.kafka import KafkaSink
from riprap.connectors.kafka._sink import _as_riprap_error, _milliseconds
from riprap.lowlevel import Ack, DropsOrigin, SourceOrigin
from tests.connectors._origins import joined

if TYPE_CHECKING:
    from riprap.lowlevel import Headers

    from .conftest import KafkaHelper

pytestmark = pytest.mark.anyio

BIG = 123456789012345678901234567890


def source_batch(values: list[Any], keys: list[Any]) -> Batch:
    """A batch whose records carry keys, one header and a timestamp, as a source made them."""
    source = SourceBatch(
        "in:0",
        values,
        start=0,
        keys=keys,
        headers=[[("trace", str(i).encode())] for i in range(len(values))],
        timestamps=[1_700_000_000.0 + i for i in range(len(values))],
    )
    return Batch(list(values), Ack(lambda: None), SourceOrigin(source))


@pytest.mark.kafka
async def test_writes_every_record_acknowledged(kafka: KafkaHelper) -> None:
    """After ``write`` returns, every record is on the topic with its key, headers and time."""
    topic = await kafka.create_topic(4)
    values = [{"id": i} for i in range(500)]
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap)
    await sink.open()
    try:
        await sink.write(source_batch(values, [f"k{i}".encode() for i in range(500)]))
    finally:
        await sink.aclose()
    messages = await kafka.read_all(topic, 500)
    got = {m.key: (orjson.loads(m.value), list(m.headers), m.timestamp) for m in messages}
    expected = {
        f"k{i}".encode(): ({"id": i}, [("trace", str(i).encode())], 1_700_000_000_000 + i * 1000)
        for i in range(500)
    }
    assert expected == got
    assert 500 == len(messages)


@pytest.mark.kafka
async def test_partitions_by_key_like_the_default_partitioner(kafka: KafkaHelper) -> None:
    """A keyed record lands on murmur2(key) modulo the partition count."""
    topic = await kafka.create_topic(4)
    sink = KafkaSink(
        topic, bootstrap_servers=kafka.bootstrap, key=lambda v: v["id"], serializer="json"
    )
    await sink.open()
    try:
        await sink.write(source_batch([{"id": f"order-{i}"} for i in range(40)], [None] * 40))
    finally:
        await sink.aclose()
    messages = await kafka.read_all(topic, 40)
    expected = {m.key: (murmur2(m.key) & 0x7FFFFFFF) % 4 for m in messages}
    assert expected == {m.key: m.partition for m in messages}
    assert {f"order-{i}".encode() for i in range(40)} == set(expected)


@pytest.mark.kafka
async def test_unserialisable_value_is_a_data_error(kafka: KafkaHelper) -> None:
    """A value the serializer cannot encode fails the write with a ``DataError``."""
    topic = await kafka.create_topic(1)
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap, serializer="bytes")
    await sink.open()
    try:
        with pytest.raises(DataError, match="expected bytes"):
            await sink.write(source_batch(["text"], [b"k"]))
    finally:
        await sink.aclose()


def test_retriable_kafka_errors_become_transient() -> None:
    """Retriable delivery errors are ``TransientError``; others are left as they are."""
    fatal = UnknownError()
    assert isinstance(_as_riprap_error(KafkaConnectionError()), TransientError)
    assert fatal is _as_riprap_error(fatal)


def batch_from_partitions(parts: dict[str, list[bytes]]) -> Batch:
    """One batch joining source batches of several partitions (as re-batching makes them)."""
    sources = [
        SourceBatch(name, values, start=0, keys=[b"k-" + v for v in values])
        for name, values in parts.items()
    ]
    values = [value for source in sources for value in source.values]
    return Batch(values, Ack(lambda: None), joined(*sources))


@pytest.mark.kafka
async def test_source_partitioner_keeps_each_record_in_its_source_partition_number(
    kafka: KafkaHelper,
) -> None:
    """``partitioner="source"`` writes "in:N" records to partition N (mod the count)."""
    topic = await kafka.create_topic(4)
    sink = KafkaSink(
        topic, bootstrap_servers=kafka.bootstrap, serializer="bytes", partitioner="source"
    )
    parts = {f"in:{n}": [f"{n}-{i}".encode() for i in range(20)] for n in (0, 1, 3, 6)}
    parts["not-kafka"] = [b"x-0"]  # no partition number: the key hash decides
    await sink.open()
    try:
        await sink.write(batch_from_partitions(parts))
    finally:
        await sink.aclose()
    messages = await kafka.read_all(topic, 81)
    got = {m.value: m.partition for m in messages}
    expected = {v: int(n.split(":")[1]) % 4 for n, vs in parts.items() if ":" in n for v in vs}
    expected[b"x-0"] = (murmur2(b"k-x-0") & 0x7FFFFFFF) % 4
    assert expected == got


@pytest.mark.kafka
async def test_a_partitioner_function_picks_the_partition(kafka: KafkaHelper) -> None:
    topic = await kafka.create_topic(3)
    sink = KafkaSink(
        topic,
        bootstrap_servers=kafka.bootstrap,
        serializer="bytes",
        partitioner=lambda key, value, count: len(value) % count,
    )
    values = [b"a" * n for n in range(1, 10)]
    await sink.open()
    try:
        await sink.write(source_batch(values, [None] * len(values)))
    finally:
        await sink.aclose()
    messages = await kafka.read_all(topic, len(values))
    assert {v: len(v) % 3 for v in values} == {m.value: m.partition for m in messages}


def test_an_unknown_partitioner_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown partitioner 'round-robin'"):
        KafkaSink("t", bootstrap_servers="127.0.0.1:9", partitioner="round-robin")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_batch_size"):
        KafkaSink("t", bootstrap_servers="127.0.0.1:9", producer_options={"max_batch_size": 1})


@pytest.mark.kafka
async def test_a_partitioner_out_of_range_is_a_clear_error(kafka: KafkaHelper) -> None:
    topic = await kafka.create_topic(2)
    sink = KafkaSink(
        topic,
        bootstrap_servers=kafka.bootstrap,
        serializer="bytes",
        partitioner=lambda key, value, count: count,
    )
    await sink.open()
    try:
        with pytest.raises(ValueError, match="returned 2 for a topic of 2 partitions"):
            await sink.write(source_batch([b"v"], [b"k"]))
    finally:
        await sink.aclose()


def filtered_batch(size: int, removed: set[int]) -> tuple[SourceBatch, Batch]:
    """A source batch and the batch a filter left of it (items at ``removed`` dropped)."""
    source = SourceBatch(
        "in:2",
        [{"i": i} for i in range(size)],
        start=0,
        keys=[f"key-{i}".encode() for i in range(size)],
        headers=[[("n", str(i).encode())] for i in range(size)],
        timestamps=[1_700_000_000.0 + i for i in range(size)],
    )
    # DropsOrigin notes the output length at each removal: the k-th removed index minus k.
    drops = [at - k for k, at in enumerate(sorted(removed))]
    kept = [v for i, v in enumerate(source.values) if i not in removed]
    return source, Batch(kept, Ack(lambda: None), DropsOrigin(SourceOrigin(source), drops))


@pytest.mark.kafka
async def test_filtered_batch_keeps_every_record_s_own_key_headers_and_time(
    kafka: KafkaHelper,
) -> None:
    """Items left by a filter are written with their own source record's metadata."""
    topic = await kafka.create_topic(3)
    removed = {0, 1, 7, 50, 51, 52, 299}
    _, batch = filtered_batch(300, removed)
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap)
    await sink.open()
    try:
        await sink.write(batch)
    finally:
        await sink.aclose()
    messages = await kafka.read_all(topic, 300 - len(removed))
    got = {
        m.key: (orjson.loads(m.value)["i"], list(m.headers), m.timestamp, m.partition)
        for m in messages
    }
    expected = {
        f"key-{i}".encode(): (
            i,
            [("n", str(i).encode())],
            1_700_000_000_000 + i * 1000,
            (murmur2(f"key-{i}".encode()) & 0x7FFFFFFF) % 3,
        )
        for i in range(300)
        if i not in removed
    }
    assert expected == got


@pytest.mark.kafka
async def test_batches_leave_without_waiting_for_the_linger(kafka: KafkaHelper) -> None:
    """A write returns once acknowledged even with a ten-minute linger: batches leave closed."""
    topic = await kafka.create_topic(2)
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap, linger_ms=600_000)
    await sink.open()
    try:
        with anyio.fail_after(60):  # a lingering batch would hold the write for ten minutes
            await sink.write(source_batch([{"id": i} for i in range(50)], [b"k"] * 50))
    finally:
        await sink.aclose()
    assert 50 == len(await kafka.read_all(topic, 50))


@pytest.mark.kafka
async def test_json_values_are_exact_and_records_without_headers_get_none(
    kafka: KafkaHelper,
) -> None:
    """Big integers and nulls are written exactly; a source without headers adds none."""
    topic = await kafka.create_topic(1)
    values = [{"big": BIG}, {"none": None}, [1.5, "x"], None]
    source = SourceBatch("in:0", values, start=0, keys=[b"a", b"b", b"c", b"d"])
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap)
    await sink.open()
    try:
        await sink.write(Batch(list(values), Ack(lambda: None), SourceOrigin(source)))
    finally:
        await sink.aclose()
    messages = sorted(await kafka.read_all(topic, 4), key=lambda m: m.offset)
    assert [b'{"big":%d}' % BIG, b'{"none":null}', b'[1.5,"x"]', b"null"] == [
        m.value for m in messages
    ]
    assert [(), (), (), ()] == [tuple(m.headers) for m in messages]


@pytest.mark.kafka
@pytest.mark.parametrize("bad", [float("nan"), {"x": [float("inf")]}])
async def test_a_non_finite_number_is_a_data_error(kafka: KafkaHelper, bad: Any) -> None:
    """JSON cannot hold a NaN or an infinity: the write fails with ``non_finite_number``."""
    topic = await kafka.create_topic(1)
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap)
    await sink.open()
    try:
        with pytest.raises(DataError) as error:
            await sink.write(source_batch([{"ok": None}, bad], [b"a", b"b"]))
    finally:
        await sink.aclose()
    assert "non_finite_number" == error.value.reason


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("caf\udce9", "the message key is not valid text at character 3"),
        ({"id": 1}, "cannot use a dict as a message key"),
        (True, "cannot use a bool as a message key"),
    ],
    ids=["lone surrogate", "dict", "bool"],
)
async def test_a_key_that_cannot_be_bytes_is_a_data_error(
    kafka: KafkaHelper, key: Any, problem: str
) -> None:
    """Text with a lone surrogate (as ``surrogateescape`` decodes bad bytes), a dict or a
    bool as a key is an ``encode_error`` naming the problem, and nothing of the batch is sent.
    """
    topic = await kafka.create_topic(1)
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap, key=lambda value: value["k"])
    await sink.open()
    try:
        with pytest.raises(DataError, match=problem) as error:
            await sink.write(source_batch([{"k": "fine"}, {"k": key}], [None, None]))
        await sink.write(source_batch([{"k": "after"}], [None]))
    finally:
        await sink.aclose()
    messages = await kafka.read_all(topic, 1)
    assert ("encode_error", [b"after"]) == (error.value.reason, [m.key for m in messages])


@pytest.mark.kafka
async def test_headers_take_text_values_and_refuse_what_kafka_cannot_carry(
    kafka: KafkaHelper,
) -> None:
    """Text header values are sent as UTF-8 and bytes names as text; a header value of another
    type is an ``encode_error`` naming the header, and nothing of that batch is sent.
    """
    given: list[Any] = [[("a", "text"), (b"b", b"raw"), ("c", None)], [], [("n", 5)]]
    topic = await kafka.create_topic(1)
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap, headers=lambda i: given[i])
    await sink.open()
    try:
        await sink.write(source_batch([0], [b"k"]))
        with pytest.raises(DataError, match="message 1: header 'n' needs a text name") as error:
            await sink.write(source_batch([1, 2], [b"x", b"y"]))
    finally:
        await sink.aclose()
    [message] = await kafka.read_all(topic, 1)
    assert [("a", b"text"), ("b", b"raw"), ("c", None)] == list(message.headers)
    assert "encode_error" == error.value.reason


@pytest.mark.kafka
async def test_a_tombstone_needs_a_key(kafka: KafkaHelper) -> None:
    """A ``None`` value is a tombstone when keyed, and a ``DataError`` without a key."""
    topic = await kafka.create_topic(1)
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap, serializer="bytes")
    await sink.open()
    try:
        await sink.write(source_batch([b"v", None], [b"a", b"b"]))
        with pytest.raises(DataError, match="needs a key or a value"):
            await sink.write(source_batch([b"v", None], [b"a", None]))
    finally:
        await sink.aclose()
    messages = sorted(await kafka.read_all(topic, 2), key=lambda m: m.offset)
    assert [(b"a", b"v"), (b"b", None)] == [(m.key, m.value) for m in messages]


@pytest.mark.parametrize(
    "stamps",
    [
        [1_700_000_000.123, 1_700_000_000.0005, 0.0025, -1.5, 1e-4, 1.0006, -2.0004],
        [1_700_000_000, 5, 0],
        [1.5, None, 2],
        [None, None],
    ],
)
def test_milliseconds_match_rounding_each_timestamp(stamps: list[float | None]) -> None:
    """The column-wise conversion gives ``round(s * 1000)`` of each timestamp, ``None`` kept."""
    expected = [None if s is None else round(s * 1000) for s in stamps]
    assert expected == list(_milliseconds(stamps))


def edge_batch(count: int) -> tuple[list[Any], list[Any], list[float | None]]:
    """Values with big integers, keys of every kind (None, bytes, str, int), mixed timestamps."""
    values: list[Any] = [{"id": i, "big": BIG + i, "amount": i / 4} for i in range(count)]
    keys = [
        None if i % 4 == 0 else b"b-%04d" % i if i % 4 == 1 else f"s-{i:04d}" if i % 4 == 2 else i
        for i in range(count)
    ]
    stamps: list[float | None] = [
        None if i % 7 == 0 else 1_700_000_000 + i / 8 for i in range(count)
    ]
    return values, keys, stamps


def careful_key(key: Any) -> bytes | None:
    """A message key as the sink documents it: bytes, UTF-8 text, decimal integers."""
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


def careful_partition(key: bytes, count: int) -> int:
    """Where aiokafka's own (one key at a time) murmur2 puts a key."""
    return int((murmur2(key) & 0x7FFFFFFF) % count)


@pytest.mark.kafka
async def test_column_wise_writes_match_the_careful_path_per_message(kafka: KafkaHelper) -> None:
    """Every message carries what encoding, hashing and rounding it alone would give."""
    topic = await kafka.create_topic(6)
    values, keys, stamps = edge_batch(400)
    headers: list[Headers] = [[("n", str(i).encode())] if i % 3 else [] for i in range(400)]
    source = SourceBatch("in:0", values, start=0, keys=keys, headers=headers, timestamps=stamps)
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap)
    await sink.open()
    try:
        await sink.write(Batch(list(values), Ack(lambda: None), SourceOrigin(source)))
    finally:
        await sink.aclose()
    messages = await kafka.read_all(topic, 400)
    got = {orjson.loads(m.value)["id"]: m for m in messages}
    assert 400 == len(messages) == len(got)
    for i, (value, key, stamp) in enumerate(zip(values, keys, stamps, strict=True)):
        message = got[i]
        raw_key = careful_key(key)
        assert (encode_json(value), raw_key, headers[i]) == (
            message.value,
            message.key,
            list(message.headers),
        )
        if raw_key is not None:
            assert careful_partition(raw_key, 6) == message.partition
        if stamp is not None:
            assert round(stamp * 1000) == message.timestamp


@pytest.mark.kafka
async def test_tombstones_and_bytes_keep_their_key_partition(kafka: KafkaHelper) -> None:
    """Tombstones among values, keyed by str and int, land where their key hashes."""
    topic = await kafka.create_topic(4)
    values = [None if i % 2 else b"v%d" % i for i in range(64)]
    keys: list[Any] = [f"k{i:03d}" if i % 3 else i for i in range(64)]
    sink = KafkaSink(topic, bootstrap_servers=kafka.bootstrap, serializer="bytes")
    await sink.open()
    try:
        await sink.write(source_batch(values, keys))
    finally:
        await sink.aclose()
    messages = await kafka.read_all(topic, 64)
    expected = {
        careful_key(k): (v, careful_partition(careful_key(k) or b"", 4))
        for k, v in zip(keys, values, strict=True)
    }
    assert expected == {m.key: (m.value, m.partition) for m in messages}
