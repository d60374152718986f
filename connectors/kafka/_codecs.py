"""Partition names, lag arithmetic, and the value decoders and encoders (no aiokafka here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import orjson

from riprap import ConfigError, DataError, DecodeError, Record
from riprap.connectors.json_codec import encode_json, parse_json_line

Serializer = Literal["json", "bytes", "str"] | Callable[[Any], bytes | None]
"""How :class:`~riprap.connectors.kafka.KafkaSink` turns a value into message bytes."""


def partition_name(topic: str, partition: int) -> str:
    """The riprap partition name of a Kafka topic-partition: ``"topic:partition"``.

    Kafka topic names cannot contain ``:``, so the name splits back unambiguously.
    """
    return f"{topic}:{partition}"


def parse_partition(name: str) -> tuple[str, int]:
    """Split a ``"topic:partition"`` name back into ``(topic, partition)``.

    Raises:
        ValueError: ``name`` is not of that form.
    """
    topic, sep, number = name.rpartition(":")
    if not sep or not topic or not number.isdigit():
        raise ValueError(f"not a Kafka partition name (topic:partition): {name!r}")
    return topic, int(number)


def partition_lag(end: int | None, position: int | None) -> int | None:
    """Records between ``position`` (next to hand out) and ``end`` (next to be written).

    ``None`` when either is unknown. Never negative: some brokers report an end
    offset that lags the true one (the start of the last record batch), so a
    position past the reported end counts as caught up.
    """
    if end is None or position is None:
        return None
    return max(0, end - position)


def lag_by_partition(
    ends: Mapping[str, int | None], positions: Mapping[str, int | None]
) -> dict[str, int]:
    """:func:`partition_lag` for every partition in ``ends``; unknown ones are left out."""
    lags: dict[str, int] = {}
    for name, end in ends.items():
        lag = partition_lag(end, positions.get(name))
        if lag is not None:
            lags[name] = lag
    return lags


def _payload(value: bytes | Record | None) -> tuple[bytes | None, str, str]:
    """The raw bytes and, for a record, its topic and partition name (for the error)."""
    if isinstance(value, Record):
        partition = value.partition or ""
        topic = partition.rpartition(":")[0] or partition
        return value.value, topic, partition
    return value, "", ""


def json_value(value: bytes | Record | None) -> Any:
    """Decode a message value as JSON (a step function: ``.map("decode", json_value)``).

    Takes the raw bytes, or a whole :class:`~riprap.Record` (``record=True``)
    so the error also names the topic and partition. A tombstone (``None``)
    decodes to ``None``. Integers beyond 64 bits decode exactly
    (:func:`~riprap.connectors.json_codec.parse_json_line`).

    Raises:
        DecodeError: The value is not valid JSON (a data error: dead-lettered
            with the original bytes and headers, the pipeline goes on).
    """
    if value.__class__ is bytes:
        # The common case in two C passes and one orjson call: parse_json_line
        # only for a value with a run of 19 digits (big integers exact) or one
        # orjson refuses (it raises the DecodeError). ``find`` rather than
        # ``in``: the operator goes through the buffer protocol, twice as slow.
        if _translate(value, _DIGITS_AS_ZERO).find(_LONG_DIGITS) < 0:
            try:
                return _loads(value)
            except orjson.JSONDecodeError:
                pass
        return parse_json_line(value)
    data, topic, partition = _payload(value)
    if data is None:
        return None
    return parse_json_line(data, source=topic, partition=partition)


_loads = orjson.loads
_translate = bytes.translate
_LONG_DIGITS = b"0" * 19
"""A run of 19 digits or more may be an integer orjson turned into a float."""
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")


def str_value(value: bytes | Record | None) -> str | None:
    """Decode a message value as UTF-8 text; a step function like :func:`json_value`.

    Raises:
        DecodeError: The value is not valid UTF-8.
    """
    data, topic, partition = _payload(value)
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"invalid UTF-8 at byte {exc.start}: {exc.reason}", source=topic, partition=partition
        ) from None


def _to_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise DataError(f"expected bytes, got {type(value).__name__}", reason="encode_error")


def _json_bytes(value: Any) -> bytes:
    # Exact: big integers as digits; a NaN or an infinity is a DataError, never null.
    return encode_json(value)


def _str_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"expected str, got {type(value).__name__}", reason="encode_error")
    return value.encode()


_SERIALIZERS: dict[str, Callable[[Any], bytes | None]] = {
    "json": _json_bytes,
    "bytes": _to_bytes,
    "str": _str_bytes,
}


def resolve_serializer(serializer: Serializer) -> Callable[[Any], bytes | None]:
    """The encoding function for a serializer name, or the callable itself.

    Raises:
        ConfigError: An unknown serializer name.
    """
    if callable(serializer):
        return serializer
    try:
        return _SERIALIZERS[serializer]
    except KeyError:
        raise ConfigError(
            "serializer", f"unknown serializer {serializer!r}; use json, bytes, str or a callable"
        ) from None


Encoder = Callable[[list[Any]], list[bytes | None]]
"""Encodes a batch's values, in order, into message bytes (``None`` for a tombstone)."""


def _json_all(values: list[Any]) -> list[bytes | None]:
    # One orjson call per value; encode_json (exact big integers, a NaN refused)
    # only where orjson fails or writes a null that might stand for a NaN.
    try:
        data: list[bytes | None] = list(map(orjson.dumps, values))
    except orjson.JSONEncodeError:
        return list(map(_json_bytes, values))
    if b"null" in b" ".join(data):  # type: ignore[arg-type]  # all bytes here
        return [
            _json_bytes(value) if b"null" in raw else raw  # type: ignore[operator]
            for value, raw in zip(values, data, strict=True)
        ]
    return data


_NONE = type(None)


def _bytes_all(values: list[Any]) -> list[bytes | None]:
    if set(map(type, values)) <= {bytes, _NONE}:
        return list(values)
    return list(map(_to_bytes, values))


def _str_all(values: list[Any]) -> list[bytes | None]:
    if set(map(type, values)) == {str}:
        return list(map(str.encode, values))
    return list(map(_str_bytes, values))


_ENCODERS: dict[str, Encoder] = {"json": _json_all, "bytes": _bytes_all, "str": _str_all}


def resolve_encoder(serializer: Serializer) -> Encoder:
    """What encodes a whole batch's values for a serializer: one pass, no call per value in Python.

    Raises:
        ConfigError: An unknown serializer name.
    """
    if callable(serializer):
        fn = serializer
        return lambda values: list(map(fn, values))
    resolve_serializer(serializer)  # the same check, the same error
    return _ENCODERS[serializer]


def keys_bytes(keys: Sequence[Any]) -> Sequence[bytes | None]:
    """:func:`key_bytes` of every key; the keys themselves when they are all bytes or ``None``.

    Raises:
        DataError: A key of a type that cannot be a message key.
    """
    if set(map(type, keys)) <= {bytes, _NONE}:
        return keys
    return list(map(key_bytes, keys))


def key_bytes(key: Any) -> bytes | None:
    """A message key as bytes: bytes as they are, text as UTF-8, integers as decimal text.

    Raises:
        DataError: A key of another type, or text that is not valid Unicode
            (a lone surrogate, as ``surrogateescape`` leaves undecodable bytes).
    """
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        try:
            return key.encode()
        except UnicodeEncodeError as exc:
            raise DataError(
                f"the message key is not valid text at character {exc.start}: {exc.reason}",
                reason="encode_error",
            ) from None
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    raise DataError(f"cannot use a {type(key).__name__} as a message key", reason="encode_error")
