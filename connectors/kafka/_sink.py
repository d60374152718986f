"""The Kafka sink: a batch is written with the producer's batch API and waits for every ack."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal, final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from riprap import ConfigError, DataError, TransientError

from ._codecs import Serializer, key_bytes, resolve_serializer
from ._partition import partition_for

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from riprap import Batch
    from riprap._records import Headers, Where

_FORBIDDEN_OPTIONS = frozenset(
    ("bootstrap_servers", "acks", "enable_idempotence", "linger_ms", "transactional_id")
)


def _as_riprap_error(exc: BaseException) -> BaseException:
    """A delivery failure as the engine routes it: retriable ones are transient."""
    if isinstance(exc, MessageSizeTooLargeError):
        return DataError(f"message too large: {exc}", reason="encode_error")
    if isinstance(exc, KafkaError) and (exc.retriable or isinstance(exc, KafkaTimeoutError)):
        return TransientError(f"{type(exc).__name__}: {exc}")
    return exc


Message = tuple[bytes | None, bytes | None, list[Any], int | None]
"""Key, value, headers and timestamp (milliseconds) of one message to produce."""


def _append(builder: Any, message: Message) -> bool:
    """Add a message to a producer batch; ``False`` when the batch is full."""
    key, value, headers, timestamp = message
    return builder.append(key=key, value=value, headers=headers, timestamp=timestamp) is not None


@final
class KafkaSink:
    """Produces each value to a topic; ``write`` returns when every message is acknowledged.

    Messages are grouped by partition (the key's murmur2 hash, like Kafka's
    default partitioner; a message without a key goes to a random partition)
    and sent with the producer's batch API, in input order per partition.
    Retriable delivery errors raise :class:`~riprap.TransientError`, so the
    sink's retry policy retries the batch; a value that cannot be serialised
    or is too large raises :class:`~riprap.DataError` (dead-lettered alone).

    At-least-once, not idempotent: a batch retried after a partial failure,
    or records replayed after a crash, are produced again (duplicates).
    The idempotent producer is off by default (``enable_idempotence``).

    Args:
        topic: The topic to write to.
        bootstrap_servers: ``host:port`` of one or more brokers.
        name: The step name of the sink.
        key: ``key(value)`` gives the message key (bytes, str or int); by
            default the source record's key.
        serializer: ``"json"`` (default), ``"bytes"``, ``"str"`` or
            ``fn(value) -> bytes``.
        headers: ``headers(value)`` gives ``(name, bytes)`` pairs; by default
            the source record's headers.
        acks: ``"all"`` (default), ``1`` or ``0``.
        enable_idempotence: Turn on the idempotent producer (the broker must
            support it).
        linger_ms: How long the producer waits to fill a request.
        producer_options: Further ``AIOKafkaProducer`` keyword arguments.

    Raises:
        ConfigError: An unknown serializer, or an option given twice.

    .. versionadded:: 0.1
    """

    idempotent = False
    """Replayed records are produced again."""

    def __init__(
        self,
        topic: str,
        *,
        bootstrap_servers: str | Sequence[str],
        name: str = "kafka",
        key: Callable[[Any], Any] | None = None,
        serializer: Serializer = "json",
        headers: Callable[[Any], Headers] | None = None,
        acks: Literal["all", 0, 1] = "all",
        enable_idempotence: bool = False,
        linger_ms: int = 5,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        options = dict(producer_options or {})
        clash = sorted(_FORBIDDEN_OPTIONS & options.keys())
        if clash:
            raise ConfigError("producer_options", f"set {clash[0]!r} with its own argument")
        self.name = name
        self.topic = topic
        self._key = key
        self._headers = headers
        self._serialize = resolve_serializer(serializer)
        self._config: dict[str, Any] = {
            **options,
            "bootstrap_servers": bootstrap_servers,
            "acks": acks,
            "enable_idempotence": enable_idempotence,
            "linger_ms": linger_ms,
        }
        self._producer: Any = None

    async def open(self) -> None:
        """Start the producer and learn the topic's partitions."""
        producer = AIOKafkaProducer(**self._config)
        await producer.start()
        self._producer = producer
        try:
            await producer.partitions_for(self.topic)
        except BaseException:
            self._producer = None
            await producer.stop()
            raise

    async def write(self, batch: Batch) -> None:
        """Send the batch and wait until every message is acknowledged.

        Raises:
            TransientError: A retriable delivery failure (the batch may be
                partly written: a retry produces duplicates).
            DataError: A value could not be serialised, or is too large.
        """
        producer = self._require_open()
        try:
            futures = await self._send(producer, batch)
        except KafkaError as exc:
            raise _as_riprap_error(exc) from exc
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                error = _as_riprap_error(result)
                if error is result:
                    raise result
                raise error from result

    async def _send(self, producer: Any, batch: Batch) -> list[asyncio.Future[Any]]:
        partitions = sorted(await producer.partitions_for(self.topic))
        count = len(partitions)
        builders: dict[int, Any] = {}
        futures: list[asyncio.Future[Any]] = []
        message = self._message
        # Straight from the batch's items and their source columns: no Record per message.
        for value, where in zip(batch.items, batch.sources(), strict=True):
            built = message(value, where)
            partition = partitions[partition_for(built[0], count)]
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
            if not _append(builder, built):
                futures.append(await producer.send_batch(builder, self.topic, partition=partition))
                builder = builders[partition] = producer.create_batch()
                if not _append(builder, built):
                    raise DataError("message larger than the producer's batch size")
        for partition, builder in builders.items():
            if builder.record_count():
                futures.append(await producer.send_batch(builder, self.topic, partition=partition))
        return futures

    def _message(self, value: Any, where: Where) -> Message:
        headers: Headers
        if where is None:
            key, headers, timestamp = None, (), None
        else:
            source, i = where
            key = source.keys[i] if source.keys is not None else None
            headers = source.headers[i] if source.headers is not None else ()
            timestamp = source.timestamps[i] if source.timestamps is not None else None
        if self._key is not None:
            key = self._key(value)
        if self._headers is not None:
            headers = self._headers(value)
        key_data = key_bytes(key)
        data = self._serialize(value)
        if key_data is None and data is None:
            raise DataError("a message needs a key or a value", reason="encode_error")
        ms = None if timestamp is None else round(timestamp * 1000)
        return key_data, data, list(headers), ms

    async def flush(self) -> None:
        """Every write already waits for its acknowledgements: nothing is buffered."""
        producer = self._require_open()
        await producer.flush()

    async def aclose(self) -> None:
        """Stop the producer (it sends what it still holds first)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def _require_open(self) -> Any:
        if self._producer is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        return self._producer
