"""Column values between PostgreSQL's text format and Python.

The change stream (pgoutput) and the snapshot (columns cast to ``text``) both
hand over PostgreSQL's text output; one conversion serves both, so a row reads
the same whichever way it arrived. Integers, floats, booleans and JSON become
Python values; every other type stays in its exact text form (numeric,
timestamps, arrays, bytea as ``\\x...``), which PostgreSQL parses back
unchanged when :class:`~riprap.connectors.postgres.PostgresSink` writes it.
"""

from __future__ import annotations

import datetime
import decimal
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from riprap import DataError
from riprap.connectors.json_codec import encode_json, parse_json_line

_INTEGERS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_FLOATS = frozenset({700, 701})  # float4, float8
_BOOL, _JSON, _JSONB = 16, 114, 3802


def _float(text: str) -> float | str:
    """A float, except NaN and the infinities, which JSON cannot hold: they stay text."""
    value = float(text)
    return value if math.isfinite(value) else text


def _boolean(text: str) -> bool:
    return text == "t"


def _json(text: str) -> Any:
    return parse_json_line(text.encode())


def converter(type_oid: int) -> Callable[[str], Any]:
    """The function turning a column's text output into its Python value."""
    if type_oid in _INTEGERS:
        return int
    if type_oid in _FLOATS:
        return _float
    if type_oid == _BOOL:
        return _boolean
    if type_oid in (_JSON, _JSONB):
        return _json
    return str


def as_text(value: Any) -> str | None:
    """A Python value as PostgreSQL text input (``None`` is NULL).

    Raises:
        DataError: The value cannot be written (a NaN or infinity inside JSON,
            an object JSON cannot hold).
    """
    kind = type(value)  # exact types first: this runs once per column of every row
    if kind is str or value is None:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return str(value)
    if kind is float:
        return repr(value)
    return _other_as_text(value)


def _other_as_text(value: Any) -> str:
    """:func:`as_text` for the less common types (and subclasses of the common ones)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(int(value))
    if isinstance(value, bytes | bytearray):
        return "\\x" + bytes(value).hex()
    if isinstance(value, Mapping | list | tuple):
        return encode_json(value).decode()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    raise DataError(
        f"a {type(value).__name__} cannot be written to PostgreSQL",
        reason="not_json_serializable",
    )
