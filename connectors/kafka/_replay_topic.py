"""Dead letters back into the stream: a pipeline producing their original records to a topic.

``riprap dlq replay PATH --to-topic kafka://HOST:PORT/TOPIC`` feeds it from a
dead-letter store. Each message gets the letter's original key, value, headers
and event time, plus a ``LETTER_ID_HEADER`` header holding the letter's
id, so that whatever reads the topic can tell a replayed letter from a repeat.

What is exactly once and what is at-least-once: the replay checkpoints how
far it read the store, like every replay, so a second replay under the same
name sends nothing again, and a replay stopped cleanly (SIGTERM, Ctrl-C)
resumes where it stopped. The produce and the checkpoint are not one
transaction, though: a replay killed after Kafka acknowledged some messages
and before its next checkpoint produces those letters again when it resumes
(about one checkpoint interval's worth, a second by default). Consumers that need exactly once
deduplicate by the letter-id header; every copy of a letter carries the same id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import orjson

from riprap import Pipeline

from ._sink import KafkaSink

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from riprap import Record
    from riprap.checkpoints import CheckpointBackend
    from riprap.lowlevel import Headers

LETTER_ID_HEADER = "riprap-letter-id"
"""The header naming the dead letter a replayed message came from (its id, ASCII)."""


@final
@dataclass(frozen=True, slots=True)
class _Message:
    """One message to produce: the original key, value and headers of a letter."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def _as_bytes(payload: Any) -> bytes | None:
    """A stored payload as message bytes: bytes as they are, text as UTF-8, objects as JSON.

    Objects are what a letter holds when the failing step got decoded values;
    JSON is the form the letter stored them in.
    """
    if payload is None or isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return orjson.dumps(payload)


def original_message(record: Record) -> _Message:
    """The message a replayed letter's record becomes: its key, value and headers as bytes."""
    return _Message(
        _as_bytes(record.key),
        _as_bytes(record.value),
        [(name, _as_bytes(value)) for name, value in record.headers],
    )


def _key(message: _Message) -> bytes | None:
    return message.key


def _value(message: _Message) -> bytes | None:
    return message.value


def _headers(message: _Message) -> Headers:
    return message.headers  # type: ignore[return-value]  # Kafka headers may be null


def topic_replay_pipeline(
    topic: str,
    *,
    bootstrap_servers: str | Sequence[str],
    checkpoint: CheckpointBackend,
    name: str | None = None,
    checkpoint_interval: float = 1.0,
    producer_options: Mapping[str, Any] | None = None,
) -> Pipeline:
    """A pipeline without a source that produces each record's original message to ``topic``.

    Give it a dead-letter replay source made with ``id_header=LETTER_ID_HEADER``
    (``riprap dlq replay --to-topic`` does). Messages are partitioned by key
    hash, as Kafka's default partitioner does: a keyed record lands in the
    partition it came from when the topic has as many partitions as its
    original. A message with neither key nor value (nothing to produce) is a
    data error and goes to the replay's dead-letter sink.

    Args:
        topic: The topic to produce to; it must exist.
        bootstrap_servers: ``host:port`` of one or more brokers.
        checkpoint: Where the replay records how far it read the store.
        name: The pipeline's name; ``dlq-to-<topic>`` by default.
        checkpoint_interval: Seconds between checkpoints: about what a killed
            replay produces again when it resumes.
        producer_options: Further ``AIOKafkaProducer`` keyword arguments.

    .. versionadded:: 0.2
    """
    sink = KafkaSink(
        topic,
        bootstrap_servers=bootstrap_servers,
        name="topic",
        key=_key,
        serializer=_value,
        headers=_headers,
        producer_options=producer_options,
    )
    return (
        Pipeline(
            name or f"dlq-to-{topic}",
            checkpoint=checkpoint,
            checkpoint_interval=checkpoint_interval,
        )
        .map("message", original_message, record=True)
        .sink(sink)
    )
