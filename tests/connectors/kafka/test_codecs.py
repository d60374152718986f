"""The Kafka value codecs: JSON decoded and encoded losslessly (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import riprap
from riprap.connectors.json_codec import parse_json_column, parse_json_line
from riprap.connectors.kafka import json_value

BIG = 123456789012345678901234567890


def test_json_value_keeps_big_integers() -> None:
    """An integer beyond 64 bits in a message decodes exactly, with its topic on errors."""
    record = riprap.Record(b"{", partition="orders:3", offset=9)
    assert {"id": BIG} == json_value(b'{"id": %d}' % BIG)
    with pytest.raises(riprap.DecodeError) as error:
        json_value(record)
    expected = ("orders", "orders:3", "decode_error")
    assert expected == (error.value.source, error.value.partition, error.value.reason)


CAREFUL_CASES = [
    b'{"id": 1, "amount": 3.25, "email": "a@example.com"}',
    b'{"n": 1234567890123456789}',  # 19 digits, within 64 bits
    b'{"n": 12345678901234567890}',  # 20 digits, an unsigned 64-bit integer
    b'{"n": -9999999999999999999}',  # 19 digits, below the signed 64-bit range
    b"[18446744073709551616]",  # 2**64
    b'{"big": %d, "small": 7}' % BIG,
    b'{"s": "12345678901234567890123"}',  # a long digit run inside a string
    b'{"f": 1.2345678901234567890123}',  # a long digit run in a fraction
    b'{"e": 12345678901234567890123e-3}',
    b"null",
    b'"text"',
    b"[]",
    b"0",
]


@pytest.mark.parametrize("raw", CAREFUL_CASES)
def test_json_value_matches_the_careful_parser(raw: bytes) -> None:
    """The fast path decodes every value as ``parse_json_line`` does, types included."""
    expected = parse_json_line(raw)
    got = json_value(raw)
    assert (repr(expected), type(expected)) == (repr(got), type(got))


@pytest.mark.parametrize("raw", [b'{"a":', b"", b"\xff", b'{"n": 1234567890123456789012', b"nul"])
def test_json_value_refuses_what_the_careful_parser_refuses(raw: bytes) -> None:
    """Invalid JSON, with or without a long digit run, is the careful parser's DecodeError."""
    with pytest.raises(riprap.DecodeError) as careful:
        parse_json_line(raw)
    with pytest.raises(riprap.DecodeError) as fast:
        json_value(raw)
    assert (str(careful.value), careful.value.reason) == (str(fast.value), fast.value.reason)


def test_json_value_of_a_tombstone_record_is_none() -> None:
    """A record without a value (a tombstone) decodes to ``None``."""
    assert json_value(riprap.Record(None, partition="orders:0", offset=1)) is None
    assert json_value(None) is None


BAD_CASES = [b'{"a":', b"", b"\xff", b'{"n": 1234567890123456789012', b"nul"]


@given(st.lists(st.sampled_from([*CAREFUL_CASES, *BAD_CASES, None]), max_size=30))
def test_a_decoded_batch_is_json_value_of_each_value(values: list[bytes | None]) -> None:
    """``KafkaSource(decode="json")`` decodes a batch as ``json_value`` decodes each value.

    A value ``json_value`` refuses stays its bytes, with the same error under its index.
    """
    where = {"source": "orders", "partition": "orders:2"}  # as KafkaSource places errors
    decoded, errors = parse_json_column(values, lambda _: where)
    expected: list[Any] = []
    refused: dict[int, tuple[str, str, str, str]] = {}
    for index, value in enumerate(values):
        record = riprap.Record(value, partition="orders:2", offset=index)
        try:
            expected.append(json_value(record))
        except riprap.DecodeError as error:
            expected.append(value)
            refused[index] = (str(error), error.reason, error.source, error.partition)
    assert [(repr(v), type(v)) for v in expected] == [(repr(v), type(v)) for v in decoded]
    found = {i: (str(e), e.reason, e.source, e.partition) for i, e in errors.items()}
    assert refused == found
