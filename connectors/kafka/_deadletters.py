"""Dead letters to a Kafka topic: original key and value bytes, envelope as headers.

Follows the Kafka Connect convention: the message is the record as consumed
(its key, value and headers), and the failure travels in ``riprap.error.*``
headers, so consumers of the dead-letter topic need no envelope parser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from aiokafka import AIOKafkaProducer

from riprap._deadletter import decode_payload

from ._sink import _as_riprap_error

if TYPE_CHECKING:
    from collections.abc import Sequence

    from riprap import DeadLetter

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
)


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
    return headers


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
        """Flush and stop the producer."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
