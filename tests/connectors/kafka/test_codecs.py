"""The Kafka value codecs: JSON decoded and encoded losslessly (no broker needed)."""

from __future__ import annotations

import pytest

import riprap
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
