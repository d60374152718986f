"""The dead-letter envelope: a failed record, as consumed, with why and where it failed.

A :class:`DeadLetter` is what a dead-letter sink stores and what ``riprap dlq``
inspects and replays. It is versioned (``version``, currently 1) and carried as
one line of JSON. Readers accept unknown extra fields, so fields can be added
without a version bump; a removed or changed field needs a new version.

Payloads (key, value, header values) keep the bytes as consumed: valid UTF-8 is
stored as text (encoding ``"utf-8"``), other bytes as base64 (``"base64"``), and
values that were already decoded into objects as JSON text (``"json"``),
exactly: an integer beyond 64 bits keeps its digits and a lone surrogate is a
``\\udcNN`` escape, so the letter stays valid UTF-8. What
JSON cannot hold is converted, so it comes back changed: bytes inside an object
become text (or base64), sets become lists, non-string keys become strings, and
anything else (a custom class) its ``str()``. Building an envelope never fails
on a strange value: a dead letter must always be writable.

The ``id`` is a hash of pipeline, source partition, offset and stage, so the
same failure dead-lettered twice (say, replayed after a crash) has the same id:
the SQLite store keeps one copy and every reader (``riprap dlq inspect``,
``replay``, ``purge``; the file, Kafka and S3 readers) folds the repeats. A
letter whose record has no known offset (an item no source record can be
traced to) cannot be told apart from another failure at the same stage, so it
gets a random id instead: its repeats are not folded, but two different
failures are never folded into one.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import importlib.metadata
import json
import re
import secrets
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, final

import orjson

from riprap._core.errors import DataError, PoisonPillError

if TYPE_CHECKING:
    from riprap._core.records import Record
    from riprap.observability._redact import Redactor

_LONG_DIGITS = re.compile(r"\d{19}")
"""A run of digits that may be an integer beyond 64 bits."""

SCHEMA_VERSION = 1
"""The envelope version this module writes (and the only one it reads)."""

MAX_MESSAGE_CHARS = 2_048
"""Longer error messages keep their head and say how much was cut."""

MAX_TRACEBACK_CHARS = 8_192
"""Longer tracebacks keep their tail (the innermost frames) and say how much was cut."""

ENCODINGS = frozenset({"utf-8", "base64", "json"})
"""How a payload is stored: UTF-8 text, base64 of raw bytes, or JSON text of an object."""

# Text longer than this is cut before redaction so that a huge message costs
# bounded time; the cut end lies far outside what the final trim keeps.
_PRE_TRIM = 16 * MAX_TRACEBACK_CHARS

Header = tuple[str, str, str]
"""A stored header: ``(name, encoding, data)``."""


@functools.cache
def riprap_version() -> str:
    """The installed riprap version, or ``"0+unknown"`` when running from a bare tree."""
    try:
        return importlib.metadata.version("riprap")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def letter_id(pipeline: str, partition: str | None, offset: int | None, stage: str) -> str:
    """The deterministic id of a dead letter: sha256 hex of where it failed.

    Without an ``offset`` nothing tells two failures apart, so the id is random
    (64 hex characters too): never two letters folded into one (see the module docstring).
    """
    if offset is None:
        return secrets.token_hex(32)
    # A JSON array keeps the parts apart: ("a:b", "c") and ("a", "b:c") differ.
    return hashlib.sha256(orjson.dumps([pipeline, partition, offset, stage])).hexdigest()


def encode_payload(obj: Any) -> tuple[str, str]:
    """``(encoding, data)`` for a key, value or header value (see the module docstring)."""
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return "utf-8", raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64", base64.b64encode(raw).decode("ascii")
    return "json", _json_text(obj)


def _json_text(obj: Any) -> str:
    """JSON text for ``obj``; never raises, since a dead letter must always be writable.

    What orjson refuses (an integer beyond 64 bits, text with a lone
    surrogate, nesting deeper than it goes) is written by the standard
    library as ASCII, so a lone surrogate is a ``\\udcNN`` escape that any
    store can hold and :func:`decode_payload` gives back exactly.
    """
    try:
        return orjson.dumps(obj, default=_jsonable, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        pass  # written below by the standard library instead
    try:
        return json.dumps(obj, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(_safe_str(obj))


def _optional_payload(obj: Any) -> tuple[str | None, str | None]:
    """Like :func:`encode_payload`, with ``(None, None)`` for ``None`` (no key)."""
    return (None, None) if obj is None else encode_payload(obj)


def decode_payload(encoding: str, data: str, *, what: str = "payload") -> Any:
    """The original key, value or header value from its stored form.

    Raises:
        ValueError: ``data`` is not valid for ``encoding``, or the encoding is unknown.
    """
    try:
        if encoding == "utf-8":
            return data.encode("utf-8")
        if encoding == "base64":
            return base64.b64decode(data, validate=True)
        if encoding == "json":
            return _json_value(data)
    except (binascii.Error, json.JSONDecodeError, UnicodeEncodeError, RecursionError) as exc:
        raise ValueError(f"dead letter {what}: invalid {encoding} data: {exc}") from None
    raise ValueError(f"dead letter {what}: unknown encoding {encoding!r}")


def _json_value(data: str) -> Any:
    """The value of JSON text :func:`_json_text` wrote, exactly.

    orjson reads integers beyond 64 bits as floats and refuses escaped lone
    surrogates; text holding either is read by the standard library.
    """
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # an escaped lone surrogate: read below by the standard library
    return json.loads(data)


def _printable(text: str) -> str:
    """``text``, any lone surrogate in it (undecodable bytes) as a ``\\udcNN`` escape."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _jsonable(obj: Any) -> Any:
    """orjson's fallback for types it cannot serialise."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return encode_payload(obj)[1]
    if isinstance(obj, set | frozenset):
        return list(obj)
    return _safe_str(obj)


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:  # a broken __str__ must not lose the dead letter
        return f"<unprintable {type(obj).__name__}>"


def _header_name(name: object) -> str:
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    return _printable(name if isinstance(name, str) else _safe_str(name))


def _trim_head(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [... {len(text) - limit} characters trimmed]"


def _trim_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters trimmed ...]\n{text[-limit:]}"


def error_type_name(error: BaseException) -> str:
    """``module.QualName`` of the error's type; builtins by their bare name."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@final
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The versioned envelope of one dead-lettered record (schema version 1).

    Build one with :meth:`create`; store it with :meth:`to_json`; read it back
    with :meth:`from_json`. Times are seconds since the epoch. ``key``,
    ``value`` and the header data are stored forms: use :meth:`original_key`,
    :meth:`original_value` and :meth:`original_headers` for the originals.

    .. versionadded:: 0.1
    """

    id: str
    pipeline: str
    stage: str
    reason: str
    error_type: str
    message: str
    traceback: str
    attempts: int
    first_failure_at: float
    last_failure_at: float
    source: str
    partition: str | None
    offset: int | None
    key: str | None
    key_encoding: str | None
    value: str | None
    value_encoding: str | None
    headers: tuple[Header, ...]
    timestamp: float | None
    riprap_version: str
    config_hash: str
    trace_id: str | None
    idempotency_key: str
    version: int = SCHEMA_VERSION

    @classmethod
    def create(
        cls,
        *,
        pipeline: str,
        stage: str,
        error: BaseException,
        reason: str | None = None,
        record: Record | None,
        source: str,
        attempts: int,
        first_failure_at: float,
        last_failure_at: float,
        config_hash: str,
        redactor: Redactor,
        trace_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> DeadLetter:
        """The envelope for ``record`` failing in ``stage`` with ``error``.

        Args:
            pipeline: The pipeline's name.
            stage: The step id where the record failed.
            error: The (last) exception; its message and traceback are redacted.
            reason: Why it was dead-lettered; defaults to ``error.reason`` for a
                :class:`~riprap.DataError`, else ``"error"``.
            record: The source record as consumed (``SourceBatch.record(i)``,
                not a derived item), so that a replay feeds the pipeline what the
                source gave it; ``None`` when no record is known.
            source: The source's name.
            attempts: How many times processing was tried.
            first_failure_at: When the first attempt failed (epoch seconds).
            last_failure_at: When the last attempt failed (epoch seconds).
            config_hash: Identifies the pipeline configuration that failed.
            redactor: Cleans the message and traceback.
            trace_id: The record's trace id, when tracing is on.
            idempotency_key: What a replay will use; defaults to
                ``f"{pipeline}:{partition}:{offset}"``.
        """
        if reason is None:
            reason = error.reason if isinstance(error, DataError) else "error"
        partition = record.partition if record is not None else None
        offset = record.offset if record is not None else None
        key_enc, key = _optional_payload(record.key if record is not None else None)
        value_enc, value = (None, None) if record is None else encode_payload(record.value)
        headers: tuple[Header, ...] = ()
        if record is not None:
            headers = tuple(
                (_header_name(name), *encode_payload(data)) for name, data in record.headers or ()
            )
        tb = "".join(traceback.format_exception(error))
        kind = error_type_name(error)
        if isinstance(error, PoisonPillError) and error.error_type:
            # A crash-loop letter keeps the exception that stopped the run, not its stand-in.
            kind, tb = error.error_type, f"{error.traceback.rstrip()}\n\n{tb}"
        return cls(
            id=letter_id(pipeline, partition, offset, stage),
            pipeline=pipeline,
            stage=stage,
            reason=reason,
            error_type=kind,
            message=_printable(
                _trim_head(redactor.redact(_safe_str(error)[:_PRE_TRIM]), MAX_MESSAGE_CHARS)
            ),
            traceback=_printable(_trim_tail(redactor.redact(tb[-_PRE_TRIM:]), MAX_TRACEBACK_CHARS)),
            attempts=attempts,
            first_failure_at=first_failure_at,
            last_failure_at=last_failure_at,
            source=source,
            partition=partition,
            offset=offset,
            key=key,
            key_encoding=key_enc,
            value=value,
            value_encoding=value_enc,
            headers=headers,
            timestamp=record.timestamp if record is not None else None,
            riprap_version=riprap_version(),
            config_hash=config_hash,
            trace_id=trace_id,
            idempotency_key=(
                f"{pipeline}:{partition}:{offset}" if idempotency_key is None else idempotency_key
            ),
        )

    def to_json(self) -> bytes:
        """The envelope as one line of JSON (no trailing newline)."""
        return orjson.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-ready mapping, ``version`` first."""
        data: dict[str, Any] = {"version": self.version}
        for f in fields(self):
            data[f.name] = getattr(self, f.name)
        data["headers"] = [list(header) for header in self.headers]
        return data

    @classmethod
    def from_json(cls, data: bytes | str) -> DeadLetter:
        """Parse an envelope written by :meth:`to_json`.

        Raises:
            ValueError: ``data`` is not JSON, not an object, of another version,
                or a field is missing or has the wrong type; the message names it.
        """
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"dead letter: not valid JSON: {exc}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: object) -> DeadLetter:
        """Build an envelope from a mapping of its fields, checking every one.

        Raises:
            ValueError: As for :meth:`from_json`.
        """
        if not isinstance(raw, Mapping):
            raise ValueError(f"dead letter: expected a JSON object, got {type(raw).__name__}")
        version = raw.get("version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"dead letter: unsupported envelope version {version!r}"
                f" (this riprap reads version {SCHEMA_VERSION})"
            )
        values = {name: _field(raw, name, kinds) for name, kinds in _FIELDS.items()}
        values["headers"] = _headers(values["headers"])
        for name in ("first_failure_at", "last_failure_at", "timestamp"):
            if values[name] is not None:  # JSON may have written a whole number as an int
                values[name] = float(values[name])
        for prefix in ("key", "value"):
            _check_pair(values, prefix)
        return cls(**values)

    def original_key(self) -> Any:
        """The key as consumed (bytes, or the decoded object); ``None`` if there was none."""
        if self.key is None or self.key_encoding is None:
            return None
        return decode_payload(self.key_encoding, self.key, what="key")

    def original_value(self) -> Any:
        """The value as consumed: bytes, or the decoded object it already was.

        Raises:
            ValueError: The stored value cannot be decoded.
        """
        if self.value is None or self.value_encoding is None:
            return None
        return decode_payload(self.value_encoding, self.value, what="value")

    def original_headers(self) -> list[tuple[str, Any]]:
        """The headers as consumed, ``(name, value)`` pairs in their original order."""
        return [
            (name, decode_payload(enc, data, what=f"header {name!r}"))
            for name, enc, data in self.headers
        ]

    def value_size(self) -> int:
        """The size in bytes of the stored value (decoded bytes for base64)."""
        if self.value is None:
            return 0
        if self.value_encoding == "base64":
            return len(self.value) * 3 // 4 - self.value[-2:].count("=")
        return len(self.value.encode("utf-8"))


_STR = (str,)
_OPT_STR = (str, type(None))
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))

# Field name -> accepted JSON types; the order is the dataclass order.
_FIELDS: dict[str, tuple[type, ...]] = {
    "id": _STR,
    "pipeline": _STR,
    "stage": _STR,
    "reason": _STR,
    "error_type": _STR,
    "message": _STR,
    "traceback": _STR,
    "attempts": (int,),
    "first_failure_at": _NUM,
    "last_failure_at": _NUM,
    "source": _STR,
    "partition": _OPT_STR,
    "offset": (int, type(None)),
    "key": _OPT_STR,
    "key_encoding": _OPT_STR,
    "value": _OPT_STR,
    "value_encoding": _OPT_STR,
    "headers": (list, tuple),
    "timestamp": _OPT_NUM,
    "riprap_version": _STR,
    "config_hash": _STR,
    "trace_id": _OPT_STR,
    "idempotency_key": _STR,
}


def _field(raw: Mapping[str, Any], name: str, kinds: tuple[type, ...]) -> Any:
    if name not in raw:
        raise ValueError(f"dead letter: field {name!r} is missing")
    value = raw[name]
    if not isinstance(value, kinds) or isinstance(value, bool):
        expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ValueError(f"dead letter: field {name!r} is {value!r}, expected {expected}")
    return value


def _headers(raw: list[Any] | tuple[Any, ...]) -> tuple[Header, ...]:
    headers = []
    for i, header in enumerate(raw):
        if (
            not isinstance(header, list | tuple)
            or len(header) != 3
            or not all(isinstance(part, str) for part in header)
        ):
            raise ValueError(
                f"dead letter: headers[{i}] is {header!r}, expected [name, encoding, data]"
            )
        if header[1] not in ENCODINGS:
            raise ValueError(f"dead letter: headers[{i}] has unknown encoding {header[1]!r}")
        headers.append((header[0], header[1], header[2]))
    return tuple(headers)


def _check_pair(values: Mapping[str, Any], prefix: str) -> None:
    data, encoding = values[prefix], values[f"{prefix}_encoding"]
    if (data is None) != (encoding is None):
        raise ValueError(
            f"dead letter: {prefix!r} and {prefix + '_encoding'!r} must both be null or both set"
        )
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"dead letter: field {prefix + '_encoding'!r} is unknown: {encoding!r}")
