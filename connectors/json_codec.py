"""JSON for every connector, losslessly: nothing is changed silently (I7).

orjson is fast but not exact at the edges: it turns an integer beyond 64 bits
into a float (``123456789012345678901234567890`` becomes ``1.2345678901234568e+29``)
and writes a NaN or an infinity as ``null``. The functions here keep orjson's
speed and refuse to change a value:

Decoding
    A line holding a run of 19 or more digits (where an integer beyond 64 bits
    may hide) is parsed again with the standard library, which keeps big
    integers exact; every other line costs one extra C pass over its bytes.
    So is a line orjson refuses for a number too long for a float (an integer
    of hundreds of digits is valid JSON). A number beyond the float range
    (``1e400``) or an integer too long for Python to convert (over
    ``sys.get_int_max_str_digits()`` digits) is a :class:`~riprap.DecodeError`
    with reason ``number_out_of_range``; anything else that is not valid JSON
    one with reason ``decode_error``.

Encoding
    Integers beyond 64 bits are written exactly. A NaN or an infinity, which
    JSON cannot hold, is a :class:`~riprap.DataError` with reason
    ``non_finite_number``, and any other value orjson cannot serialise one with
    reason ``not_json_serializable``: the engine dead-letters the record, as it
    does any record failure.

.. versionadded:: 0.2
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import TYPE_CHECKING, Any

import orjson

from riprap import DataError, DecodeError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from riprap import Batch

__all__ = (
    "encode_json",
    "encode_json_lines",
    "parse_json_batch",
    "parse_json_column",
    "parse_json_line",
    "parse_json_values",
)

_LONG_DIGITS = b"0" * 19  # 19 digits or more may be an integer beyond 64 bits
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")
_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1
_TOO_MANY_DIGITS = "number is infinity"  # orjson's words for a number over ~309 digits


def parse_json_line(
    data: bytes | str, *, source: str = "", line: int | None = None, partition: str = ""
) -> Any:
    """Parse one JSON line with orjson; integers beyond 64 bits come out exact.

    Args:
        data: The line, without its line ending.
        source: Where it came from (a file path, a topic, a URL), for the message.
        line: Its 1-based line number, for the message.
        partition: The source partition, kept on the error.

    Raises:
        DecodeError: ``data`` is not valid JSON (reason ``decode_error``, also
            for integers of 19 or more digits nested deeper than Python's
            recursion limit lets them be decoded exactly), or holds an integer
            too long to convert (reason ``number_out_of_range``); the message
            reads ``source:line: why``.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if not exc.msg.startswith(_TOO_MANY_DIGITS):
            raise DecodeError(
                f"invalid JSON at column {exc.colno}: {exc.msg}",
                source=source,
                line=line,
                partition=partition,
            ) from None
    else:
        if not _has_long_digits(data):
            return value
    try:
        return _parse_exactly(data)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            f"invalid JSON at column {exc.colno}: {exc.msg}",
            source=source,
            line=line,
            partition=partition,
        ) from None
    except ValueError as exc:
        error = DecodeError(
            f"a number is out of range: {exc}", source=source, line=line, partition=partition
        )
        error.reason = "number_out_of_range"
        raise error from None
    except RecursionError:  # the exact parser recurses per level, orjson goes to 1,024
        raise DecodeError(
            "nested too deep to decode its integers of 19 or more digits exactly",
            source=source,
            line=line,
            partition=partition,
        ) from None


def parse_json_batch(batch: Batch) -> list[Any]:
    """Parse every item of a batch of raw JSON lines, for a decoding stage.

    The file and line of a bad item come from its record metadata (partition =
    path, offset = line index); the lookup happens only on failure.

    Raises:
        DecodeError: An item is not valid JSON; names its file and 1-based line.
    """
    try:
        return parse_json_values(batch.items)
    except DecodeError:
        pass
    values = []
    for index, item in enumerate(batch.items):
        try:
            values.append(parse_json_line(item))
        except DecodeError:
            partition, offset = batch.position(index)
            line = None if offset is None else offset + 1
            parse_json_line(item, source=partition or "", line=line)  # raises, naming the line
    return values


def parse_json_values(items: Sequence[Any]) -> list[Any]:
    """Parse every item (a JSON text, bytes or str) losslessly, in one fast pass.

    For batches of lines whose location does not matter until one fails: on
    failure, parse the items one by one with :func:`parse_json_line` to name
    the bad one.

    Raises:
        DecodeError: An item is not valid JSON or holds a number out of range
            (the message does not say which item).
    """
    loads = orjson.loads
    try:
        values = [loads(item) for item in items]
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON at column {exc.colno}: {exc.msg}") from None
    if _any_long_digits(items):
        for index, item in enumerate(items):
            if _has_long_digits(item):
                values[index] = parse_json_line(item)
    return values


def parse_json_column(
    items: Sequence[Any], located: Callable[[int], Mapping[str, Any]]
) -> tuple[list[Any], dict[int, DecodeError]]:
    """Parse a source's batch losslessly, setting aside each item that is not JSON.

    Returns the values and, by index, the :class:`~riprap.DecodeError` of
    each item that is not valid JSON; such an item stays as it was, for the
    dead-letter store (a source hands both over as ``SourceBatch.errors``).
    ``located(index)`` gives the ``source``, ``line`` and ``partition`` of
    :func:`parse_json_line` for an item's error. ``None`` (a Kafka tombstone)
    stays ``None``. A batch of valid items takes one fast pass
    (:func:`parse_json_values`), any other one item at a time.

    .. versionadded:: 0.4
    """
    try:
        return parse_json_values(items), {}
    except DecodeError:  # an item is not JSON, or is None (not text)
        pass
    values: list[Any] = []
    errors: dict[int, DecodeError] = {}
    for index, item in enumerate(items):
        if item is None:
            values.append(None)
            continue
        try:
            values.append(parse_json_line(item, **located(index)))
        except DecodeError as error:
            values.append(item)
            errors[index] = error
    return values, errors


def encode_json(value: Any) -> bytes:
    """``value`` as JSON with orjson, exactly or not at all.

    Integers beyond 64 bits are written exactly; a NaN or an infinity (which
    orjson would write as ``null``) is refused.

    Raises:
        DataError: Reason ``non_finite_number`` for a NaN or an infinity,
            ``not_json_serializable`` for a value orjson cannot serialise.
    """
    try:
        return _dumps(value, 0)
    except _Unwritable as exc:
        raise DataError(exc.why, reason=exc.reason) from None


def encode_json_lines(
    batch: Batch, indexes: Iterable[int], error: Callable[[Batch, int, str], Exception]
) -> bytes:
    """The items at ``indexes`` as JSON Lines: bytes as they are, the rest via :func:`encode_json`.

    Raises:
        Exception: ``error(batch, index, why)`` for raw bytes holding a line
            break (LF or CR) or a value :func:`encode_json` refuses; sinks make
            it a ``DataError``, whose ``reason`` is then set to
            ``line_break_in_bytes``, ``non_finite_number`` or ``not_json_serializable``.
    """
    indexes = list(indexes)
    lines = []
    for index in indexes:
        item = batch.items[index]
        if isinstance(item, bytes | bytearray):
            if b"\n" in item or b"\r" in item:
                why = "raw bytes contain a line break"
                raise _reasoned(error(batch, index, why), "line_break_in_bytes")
            lines.append(bytes(item) + b"\n")
            continue
        try:
            lines.append(_dumps(item, orjson.OPT_APPEND_NEWLINE, check_finite=False))
        except _Unwritable as exc:
            raise _reasoned(error(batch, index, exc.why), exc.reason) from None
    payload = b"".join(lines)
    if b"null" in payload:  # orjson writes NaN and infinities as null: look closer
        for index, line in zip(indexes, lines, strict=True):
            found = _non_finite(batch.items[index]) if b"null" in line else None
            if found is not None:
                why = _non_finite_why(found)
                raise _reasoned(error(batch, index, why), "non_finite_number")
    return payload


_BIG_INTEGER = "Integer exceeds 64-bit range"
"""What orjson says of an integer it cannot write."""
_TOO_DEEP = "Recursion limit reached"
"""What orjson says of a value nested over 255 levels, or one that holds itself."""


class _Unwritable(Exception):
    """Why a value cannot be written as JSON, and the dead-letter reason."""

    def __init__(self, why: str, reason: str) -> None:
        super().__init__(why)
        self.why = why
        self.reason = reason


def _reasoned(error: Exception, reason: str) -> Exception:
    if isinstance(error, DataError):
        error.reason = reason
    return error


def _dumps(value: Any, option: int, *, check_finite: bool = True) -> bytes:
    try:
        data = orjson.dumps(value, option=option)
    except orjson.JSONEncodeError as first:
        if _BIG_INTEGER not in str(first):  # nested too deep, a cycle, a type: no second try
            raise _Unwritable(_unwritable_why(first), "not_json_serializable") from None
        try:  # orjson refuses integers beyond 64 bits: give them as exact text
            data = orjson.dumps(_big_ints_exact(value), option=option)
        except (orjson.JSONEncodeError, RecursionError) as second:
            raise _Unwritable(_unwritable_why(second), "not_json_serializable") from None
    if check_finite and b"null" in data:
        found = _non_finite(value)
        if found is not None:
            raise _Unwritable(_non_finite_why(found), "non_finite_number")
    return data


def _unwritable_why(error: Exception) -> str:
    """Why orjson (or the exact writer, recursing) could not write a value."""
    if isinstance(error, RecursionError) or _TOO_DEEP in str(error):
        return "not JSON-serialisable: nested too deep (over 255 levels), or it holds itself"
    return f"not JSON-serialisable: {error}"


def _non_finite_why(found: float) -> str:
    return f"not JSON-serialisable: it holds {found!r}, which JSON cannot represent"


def _big_ints_exact(value: Any) -> Any:
    """``value`` with integers beyond 64 bits as pre-serialised fragments (exact digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if _I64_MIN <= value <= _U64_MAX:
            return value
        return orjson.Fragment(str(value).encode())
    if isinstance(value, dict):
        return {key: _big_ints_exact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints_exact(item) for item in value]
    return value


def _non_finite(value: Any) -> float | None:
    """The first NaN or infinity inside ``value`` (through dicts, lists, tuples, dataclasses)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    items: Iterable[Any]
    if isinstance(value, dict):
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = (getattr(value, field.name) for field in dataclasses.fields(value))
    else:
        return None
    for item in items:
        found = _non_finite(item)
        if found is not None:
            return found
    return None


def _has_long_digits(data: bytes | bytearray | memoryview | str) -> bool:
    """Whether ``data`` holds a run of 19+ digits, which orjson may have turned into a float."""
    if isinstance(data, str):
        return _LONG_DIGITS_TEXT.search(data) is not None
    return _LONG_DIGITS in bytes(data).translate(_DIGITS_AS_ZERO)


def _any_long_digits(items: Sequence[Any]) -> bool:
    """:func:`_has_long_digits` over many lines: one C pass when they are all bytes."""
    try:
        return _LONG_DIGITS in b"\n".join(items).translate(_DIGITS_AS_ZERO)
    except TypeError:  # str (or mixed) items
        return any(_has_long_digits(item) for item in items)


def _parse_exactly(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON with the standard library: integers exact, non-finite numbers refused.

    Raises:
        json.JSONDecodeError: ``data`` is not valid JSON.
        ValueError: An integer has more digits than Python converts, or a
            number is beyond the float range (``1e400``).
    """
    text = data if isinstance(data, str) else bytes(data).decode()
    return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond the range of a float")
    return number


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)
