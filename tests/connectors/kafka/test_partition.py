"""Key partitioning: the fast murmur2 matches aiokafka's (and so the Java client's)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st

from riprap.connectors.kafka._partition import murmur2 as fast_murmur2
from riprap.connectors.kafka._partition import partition_for, partitions_for


@given(st.binary(max_size=64))
def test_murmur2_matches_aiokafka(data: bytes) -> None:
    assert murmur2(data) == fast_murmur2(data)


@given(st.binary(min_size=1, max_size=32), st.integers(1, 64))
def test_partition_matches_the_default_partitioner(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert DefaultPartitioner()(key, partitions, partitions) == partition_for(key, count)


def test_known_kafka_hashes() -> None:
    # Kafka's UtilsTest expects these (Java ints; here as unsigned 32-bit values).
    assert -973932308 & 0xFFFFFFFF == fast_murmur2(b"21")
    assert -790332482 & 0xFFFFFFFF == fast_murmur2(b"foobar")
    assert -985981536 & 0xFFFFFFFF == fast_murmur2(b"a-little-bit-long-string")


def test_keyless_messages_spread_over_every_partition() -> None:
    seen = {partition_for(None, 4) for _ in range(400)}
    assert {0, 1, 2, 3} == seen


@given(st.lists(st.binary(max_size=24), max_size=300), st.integers(1, 12))
def test_partitions_for_a_column_match_one_by_one(keys: list[bytes], count: int) -> None:
    """Keys hashed in bulk (lanes of one length together) land where each alone would."""
    assert [partition_for(key, count) for key in keys] == partitions_for(keys, count)


def test_partitions_for_many_keys_of_mixed_lengths_and_none() -> None:
    """Big groups (hashed as lanes) and keyless messages (random) in one column."""
    keys: list[bytes | None] = [str(i).encode() for i in range(2_000)] + [None] * 50
    got = partitions_for(keys, 6)
    assert [partition_for(key, 6) for key in keys[:2_000]] == got[:2_000]
    assert all(0 <= partition < 6 for partition in got[2_000:])


KEY_COLUMNS = {
    "one length": [str(100_000 + i * 7).encode() for i in range(1_000)],
    "lengths 1 to 6": [str(i).encode() for i in range(0, 200_000, 97)],
    "lengths 0 to 32 in lanes together": [bytes(range(7, 7 + i % 33)) for i in range(330)],
    "lengths 0 to 40, a length at a time": [b"\xffk" * (i % 21) for i in range(420)],
    "empty keys": [b""] * 40,
    "long keys": [b"customer-%032d" % i for i in range(64)],
    "a few": [b"a", b"bb", b"ccc"],
    "none": [],
}


@pytest.mark.parametrize("column", sorted(KEY_COLUMNS))
@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 8, 16, 64])
def test_partitions_for_a_column_match_the_default_partitioner(column: str, count: int) -> None:
    """Lanes of one length, several lengths, powers of two or not: each key lands as alone."""
    keys = KEY_COLUMNS[column]
    partitions = list(range(count))
    expected = [DefaultPartitioner()(key, partitions, partitions) for key in keys]
    assert expected == partitions_for(keys, count)


def test_partitions_for_keys_with_none_among_one_length() -> None:
    """Keyless messages among keys of one length: the keyed ones still land by their hash."""
    keys: list[bytes | None] = [None if i % 10 == 0 else b"%06d" % i for i in range(500)]
    got = partitions_for(keys, 8)
    assert [partition_for(key, 8) for key in keys if key is not None] == [
        partition for key, partition in zip(keys, got, strict=True) if key is not None
    ]
    assert all(0 <= partition < 8 for partition in got)
