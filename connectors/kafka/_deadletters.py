"""Dead letters to a Kafka topic: original key and value bytes, envelope as headers.

Follows the Kafka Connect convention: the message is the record as consumed
(its key, value and headers), and the failure travels in ``riprap.error.*``
headers, so consumers of the dead-letter topic need no envelope parser.

The envelope headers come after the original headers and start with
``riprap.error.id``; :func:`letter_from_message` reads a message back into the
same :class:`~riprap.deadletters.DeadLetter` (the round trip is exact). Payloads that were
decoded objects (encoding ``json``) are produced as their JSON text; the
``key_encoding``, ``value_encoding`` and, when needed, ``header_encodings``
headers say so, so that a replay hands the objects over again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import orjson
from aiokafka import AIOKafkaProducer

from riprap.deadletters import DeadLetter, decode_payload, encode_payload

from ._closing import stop_client
from ._sink import _as_riprap_error

if TYPE_CHECKING:
    from collections.abc import Sequence

HEADER_PREFIX = "riprap.error."
"""Prefix of the headers that carry the envelope fields."""

_ENVELOPE_HEADERS = (
    "id",
    "pipeline",
    "stage",
    "reason",
    "error_type",
    "message",
    "attempts",
    "first_failure_at",
    "last_failure_at",
    "source",
    "partition",
    "offset",
    "riprap_version",
    "config_hash",
    "trace_id",
    "idempotency_key",
    "version",
    "traceback",
    "timestamp",
    "key_encoding",
    "value_encoding",
)
_ID_HEADER = HEADER_PREFIX + "id"  # first of the envelope headers: where they start
_HEADER_ENCODINGS = "header_encodings"
_INTS = frozenset(("attempts", "offset", "version"))
_FLOATS = frozenset(("first_failure_at", "last_failure_at", "timestamp"))


def payload_bytes(data: str | None, encoding: str | None) -> bytes | None:
    """The bytes to produce for an envelope payload field (JSON text for decoded objects)."""
    if data is None or encoding is None:
        return None
    if encoding == "json":
        return data.encode()  # the stored JSON text is the object's bytes form
    raw: bytes = decode_payload(encoding, data)
    return raw


def letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original headers followed by the envelope as ``riprap.error.*`` headers."""
    headers: list[tuple[str, bytes]] = []
    for name, encoding, data in letter.headers:
        value = payload_bytes(data, encoding)
        headers.append((name, value if value is not None else b""))
    fields = letter.to_dict()
    for name in _ENVELOPE_HEADERS:
        value = fields.get(name)
        if value is not None:
            headers.append((HEADER_PREFIX + name, str(value).encode()))
    encodings = [encoding for _, encoding, _ in letter.headers]
    if "json" in encodings:
        headers.append((HEADER_PREFIX + _HEADER_ENCODINGS, orjson.dumps(encodings)))
    return headers


def letter_from_message(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> DeadLetter:
    """The :class:`~riprap.deadletters.DeadLetter` a :class:`KafkaDeadLetters` message carries.

    The inverse of how :class:`KafkaDeadLetters` writes a letter: the
    headers before the last ``riprap.error.id`` are the original ones, the
    ``riprap.error.*`` headers from there on are the envelope (unknown ones
    are ignored, like unknown JSON fields). Envelope fields a writer left out
    because they were empty read as such (no traceback: ``""``).

    Raises:
        ValueError: The message is not a riprap dead letter (no
            ``riprap.error.id`` header) or a field is malformed; the message
            names the header.
    """
    start = _envelope_start(headers)
    original = list(headers[:start])
    raw: dict[str, Any] = dict.fromkeys(("timestamp", "trace_id", "partition", "offset"))
    raw["traceback"] = ""
    for name, data in headers[start:]:
        if not name.startswith(HEADER_PREFIX):
            original.append((name, data))  # added after the envelope by someone else
            continue
        field = name[len(HEADER_PREFIX) :]
        raw[field] = _field_value(name, field, data)
    raw["key"], raw["key_encoding"] = _stored(key, raw.pop("key_encoding", None))
    raw["value"], raw["value_encoding"] = _stored(value, raw.pop("value_encoding", None))
    raw["headers"] = _original_headers(original, raw.pop(_HEADER_ENCODINGS, None))
    return DeadLetter.from_dict(raw)


def letter_id_of(headers: Sequence[tuple[str, bytes | None]]) -> str:
    """The ``id`` of the letter a message carries, read from its headers alone (cheap).

    Raises:
        ValueError: The message is not a riprap dead letter, or the id is not text.
    """
    data = headers[_envelope_start(headers)][1]
    try:
        return (data or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"dead letter: header {_ID_HEADER} is malformed: {data!r}") from None


def _envelope_start(headers: Sequence[tuple[str, bytes | None]]) -> int:
    for index in range(len(headers) - 1, -1, -1):
        if headers[index][0] == _ID_HEADER:
            return index
    raise ValueError(f"not a riprap dead letter: no {_ID_HEADER} header")


def _field_value(name: str, field: str, data: bytes | None) -> Any:
    """An envelope header's value as the JSON type :meth:`DeadLetter.from_dict` expects."""
    try:
        text = (data or b"").decode("utf-8")
        if field in _INTS:
            return int(text)
        if field in _FLOATS:
            return float(text)
        if field == _HEADER_ENCODINGS:
            return orjson.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"dead letter: header {name} is malformed: {data!r}") from None
    return text


def _stored(data: bytes | None, encoding: str | None) -> tuple[str | None, str | None]:
    """The envelope's ``(data, encoding)`` for produced payload bytes."""
    if data is None:
        return None, None
    if encoding == "json":
        try:
            return data.decode("utf-8"), "json"  # the object's JSON text, as produced
        except UnicodeDecodeError:
            raise ValueError("dead letter: a json payload is not UTF-8 text") from None
    stored_encoding, text = encode_payload(data)
    return text, stored_encoding


def _original_headers(
    headers: Sequence[tuple[str, bytes | None]], encodings: Any
) -> list[list[str | None]]:
    if encodings is not None and (
        not isinstance(encodings, list) or len(encodings) != len(headers)
    ):
        raise ValueError(
            f"dead letter: header {HEADER_PREFIX}{_HEADER_ENCODINGS} does not list"
            f" one encoding for each of the {len(headers)} original headers"
        )
    stored: list[list[str | None]] = []
    for index, (name, data) in enumerate(headers):
        encoding = encodings[index] if encodings is not None else None
        text, stored_encoding = _stored(data or b"", encoding)
        stored.append([name, stored_encoding, text])
    return stored


@final
class KafkaDeadLetters:
    """A dead-letter sink writing to ``topic``; a write is durable once acknowledged (acks=all).

    Args:
        topic: The dead-letter topic.
        bootstrap_servers: Where the brokers are.
        name: Names the sink in logs and metrics.
        producer_options: More AIOKafkaProducer settings.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap_servers: str | Sequence[str],
        name: str = "kafka-dlq",
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.name = name
        self._config = {
            **(producer_options or {}),
            "bootstrap_servers": bootstrap_servers,
            "acks": "all",
        }
        self._producer: Any = None

    async def open(self) -> None:
        """Start the producer."""
        self._producer = AIOKafkaProducer(**self._config)
        await self._producer.start()

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        """Produce every letter and wait for all acknowledgements."""
        producer = self._producer
        if producer is None:
            raise RuntimeError(f"dead-letter sink {self.name!r}: write before open")
        try:
            futures = [
                await producer.send(
                    self.topic,
                    value=payload_bytes(letter.value, letter.value_encoding),
                    key=payload_bytes(letter.key, letter.key_encoding),
                    headers=letter_headers(letter),
                )
                for letter in letters
            ]
            for future in futures:
                await future
        except Exception as exc:
            mapped = _as_riprap_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        """Flush and stop the producer (every letter written was acknowledged already)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_client(producer.stop, "dead letters")
