"""The Kafka sink: a batch is written with the producer's batch API and waits for every ack."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from riprap import ConfigError, DataError, TransientError

from ._codecs import Serializer, key_bytes, parse_partition, resolve_serializer
from ._partition import partition_for

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from riprap import Batch, SourceBatch
    from riprap.lowlevel import Headers

_FORBIDDEN_OPTIONS = frozenset(
    (
        "bootstrap_servers",
        "acks",
        "enable_idempotence",
        "linger_ms",
        "max_batch_size",
        "transactional_id",
    )
)


def _as_riprap_error(exc: BaseException) -> BaseException:
    """A delivery failure as the engine routes it: retriable ones are transient."""
    if isinstance(exc, MessageSizeTooLargeError):
        return DataError(f"message too large: {exc}", reason="encode_error")
    if isinstance(exc, KafkaError) and (exc.retriable or isinstance(exc, KafkaTimeoutError)):
        return TransientError(f"{type(exc).__name__}: {exc}")
    return exc


Partitioner = Literal["key", "source"] | Callable[[bytes | None, Any, int], int]
"""How the sink picks a message's partition; see :class:`KafkaSink`."""

_NO_HEADERS: tuple[()] = ()


@final
class KafkaSink:
    """Produces each value to a topic; ``write`` returns when every message is acknowledged.

    Messages are grouped by partition and sent with the producer's batch API,
    in input order per partition. ``partitioner="key"`` (default) hashes the
    key with murmur2 as Kafka's default partitioner does (a message without a
    key goes to a random partition); ``"source"`` keeps each record in the
    partition number it was read from (modulo the topic's partition count),
    which for a topic keyed like its input is the same partition without
    hashing every key, and falls back to the key hash for records that did not
    come from Kafka; a callable ``fn(key, value, partitions)`` returns the
    partition index itself.
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
        partitioner: ``"key"``, ``"source"`` or ``fn(key, value, partitions)``.
        acks: ``"all"`` (default), ``1`` or ``0``.
        enable_idempotence: Turn on the idempotent producer (the broker must
            support it).
        linger_ms: How long the producer waits to fill a request.
        max_batch_size: Bytes of messages per partition in one produce
            request. aiokafka keeps one request in flight per broker and puts
            one batch per partition in it, so with its default of 16 KiB a
            write of 2,000 small messages to one partition takes a dozen
            round trips; 256 KiB makes it one or two (the broker's default
            message size limit is 1 MiB).
        producer_options: Further ``AIOKafkaProducer`` keyword arguments.

    Raises:
        ConfigError: An unknown serializer or partitioner, or an option given twice.

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
        partitioner: Partitioner = "key",
        acks: Literal["all", 0, 1] = "all",
        enable_idempotence: bool = False,
        linger_ms: int = 5,
        max_batch_size: int = 256 * 1024,
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
        self._raw_bytes = serializer == "bytes"
        if not callable(partitioner) and partitioner not in ("key", "source"):
            raise ConfigError(
                "partitioner", f"unknown partitioner {partitioner!r}; use key, source or a callable"
            )
        self._partitioner = partitioner
        self._config: dict[str, Any] = {
            **options,
            "bootstrap_servers": bootstrap_servers,
            "acks": acks,
            "enable_idempotence": enable_idempotence,
            "linger_ms": linger_ms,
            "max_batch_size": max_batch_size,
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
        key_fn, headers_fn, serialize = self._key, self._headers, self._serialize
        raw_bytes = self._raw_bytes
        partitioner = self._partitioner
        by_source = partitioner == "source"
        custom = partitioner if callable(partitioner) else None
        # The hot loop reads the batch's items and their source columns directly
        # (no Record per message); a source batch's columns are looked up once.
        current: SourceBatch | None = None
        keys: list[Any] | None = None
        all_headers: list[Headers] | None = None
        stamps: list[float | None] | None = None
        home: int | None = None
        for value, where in zip(batch.items, batch.sources(), strict=True):
            key: Any = None
            headers: Headers = _NO_HEADERS
            stamp: float | None = None
            if where is not None:
                source, i = where
                if source is not current:
                    current = source
                    keys, all_headers, stamps = source.keys, source.headers, source.timestamps
                    home = _source_partition(source.partition, count) if by_source else None
                if keys is not None:
                    key = keys[i]
                if all_headers is not None:
                    headers = all_headers[i]
                if stamps is not None:
                    stamp = stamps[i]
            if key_fn is not None:
                key = key_fn(value)
            if headers_fn is not None:
                headers = headers_fn(value)
            if key is not None and key.__class__ is not bytes:
                key = key_bytes(key)
            data = value if raw_bytes and value.__class__ is bytes else serialize(value)
            if key is None and data is None:
                raise DataError("a message needs a key or a value", reason="encode_error")
            if headers.__class__ is not list:
                headers = list(headers)  # the producer's record builder takes lists only
            ms = None if stamp is None else round(stamp * 1000)
            if custom is not None:
                index = custom(key, value, count)
                if not 0 <= index < count:
                    raise ValueError(
                        f"sink {self.name!r}: the partitioner returned {index!r} for a topic "
                        f"of {count} partitions (expected 0 to {count - 1})"
                    )
                partition = partitions[index]
            elif where is not None and home is not None:
                partition = partitions[home]
            else:
                partition = partitions[partition_for(key, count)]
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
            if builder.append(key=key, value=data, headers=headers, timestamp=ms) is None:
                futures.append(await producer.send_batch(builder, self.topic, partition=partition))
                builder = builders[partition] = producer.create_batch()
                if builder.append(key=key, value=data, headers=headers, timestamp=ms) is None:
                    raise DataError("message larger than the producer's batch size")
        for partition, builder in builders.items():
            if builder.record_count():
                futures.append(await producer.send_batch(builder, self.topic, partition=partition))
        return futures

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


def _source_partition(name: str, count: int) -> int | None:
    """The Kafka partition number a source partition name carries, modulo ``count``."""
    try:
        return parse_partition(name)[1] % count
    except ValueError:
        return None
