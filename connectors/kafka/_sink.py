"""The Kafka sink: a batch is written with the producer's batch API and waits for every ack."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import repeat
from operator import mul
from typing import TYPE_CHECKING, Any, Literal, final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from riprap import ConfigError, DataError, TransientError

from ._closing import stop_client
from ._codecs import Serializer, keys_bytes, resolve_encoder
from ._columns import columns
from ._partition import partitions_for

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from riprap import Batch
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

_Header = tuple[str, bytes | None]
"""A message header as the producer's record builder takes it (``None``: a null value)."""

_NO_HEADERS: list[_Header] = []
"""Shared by every message without headers (the record builder only reads it)."""


@final
class KafkaSink:
    """Produces each value to a topic; ``write`` returns when every message is acknowledged.

    Messages are grouped by partition and sent with the producer's batch API,
    in input order per partition, each batch closed so that it leaves at once
    (an open one would wait out the linger for messages the sink never adds).
    The work per message is done column-wise over the batch: keys, values,
    headers, timestamps and partitions are each computed in one pass.
    ``partitioner="key"`` (default) hashes the key with murmur2 as Kafka's
    default partitioner does (a message without a key goes to a random
    partition); ``"source"`` keeps each record in the
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
        headers: ``headers(value)`` gives ``(name, bytes)`` pairs (a text
            value is sent as UTF-8; a value of another type is a
            :class:`~riprap.DataError`); by default the source record's headers.
        partitioner: ``"key"``, ``"source"`` or ``fn(key, value, partitions)``.
        acks: ``"all"`` (default), ``1`` or ``0``.
        enable_idempotence: Turn on the idempotent producer (the broker must
            support it).
        linger_ms: How long the producer waits to fill a request. The sink's
            own batches are closed and never wait; 0 (default) also sends
            what a full request left behind at once.
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
    .. versionchanged:: 0.2
        ``linger_ms`` defaults to 0; batches leave closed, without lingering.
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
        linger_ms: int = 0,
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
        self._encode = resolve_encoder(serializer)
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
        await (await self.start_write(batch))

    async def start_write(self, batch: Batch) -> asyncio.Future[None]:
        """Send the batch; the future completes when every message is acknowledged.

        The pipeline sends the next batches while this one is acknowledged
        (see :class:`~riprap.Sink`); the future raises what :meth:`write` would.

        Raises:
            TransientError: The batch could not be handed to the producer.
            DataError: A value could not be serialised, or is too large.
        """
        producer = self._require_open()
        try:
            futures = await self._send(producer, batch)
        except KafkaError as exc:
            raise _as_riprap_error(exc) from exc
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not futures:
            delivered.set_result(None)
            return delivered
        asyncio.gather(*futures, return_exceptions=True).add_done_callback(
            lambda acks: _settle(delivered, acks)
        )
        return delivered

    async def _send(self, producer: Any, batch: Batch) -> list[asyncio.Future[Any]]:
        items = batch.items
        if not items:
            return []
        partitions = sorted(await producer.partitions_for(self.topic))
        source = columns(batch)
        keys = list(map(self._key, items)) if self._key is not None else source.keys
        keys = None if keys is None else keys_bytes(keys)
        values = self._encode(items)
        if None in values:
            _check_tombstones(keys, values)
        targets = self._targets(keys, items, len(partitions), source.homes)
        return await self._submit(
            producer,
            partitions,
            targets,
            repeat(None) if keys is None else keys,
            values,
            self._header_column(items, source.headers),
            _milliseconds(source.timestamps),
        )

    def _targets(
        self,
        keys: Sequence[bytes | None] | None,
        items: list[Any],
        count: int,
        homes: Sequence[int | None] | None,
    ) -> Sequence[int]:
        """The partition index of every message: by key hash, by source, or the user's function."""
        partitioner = self._partitioner
        if callable(partitioner):
            return [
                self._checked(partitioner(key, value, count), count)
                for key, value in zip(keys or repeat(None), items, strict=False)
            ]
        if partitioner == "source" and homes is not None and None not in homes:
            return [home % count for home in homes]  # type: ignore[operator]  # no None left
        hashed = partitions_for([None] * len(items) if keys is None else keys, count)
        if partitioner == "source" and homes is not None:
            return [
                h if home is None else home % count for h, home in zip(hashed, homes, strict=True)
            ]
        return hashed

    def _checked(self, index: int, count: int) -> int:
        if not 0 <= index < count:
            raise ValueError(
                f"sink {self.name!r}: the partitioner returned {index!r} for a topic "
                f"of {count} partitions (expected 0 to {count - 1})"
            )
        return index

    def _header_column(
        self, items: list[Any], headers: Sequence[Headers] | None
    ) -> Iterable[list[_Header]]:
        """Each message's headers as the list the producer's record builder takes.

        Raises:
            DataError: A header ``headers(value)`` gave that is not a ``(str,
                bytes)`` pair (text values are sent as UTF-8), checked before
                anything of the batch is sent. A source's own headers are
                taken as they are.
        """
        if self._headers is not None:
            given = map(self._headers, items)
            return [
                _checked_headers(h, index) if h else _NO_HEADERS for index, h in enumerate(given)
            ]
        if headers is None:
            return repeat(_NO_HEADERS)
        return [h if h.__class__ is list else list(h) for h in headers]

    async def _submit(
        self,
        producer: Any,
        partitions: list[int],
        targets: Iterable[int],
        keys: Iterable[bytes | None],
        values: Iterable[bytes | None],
        headers: Iterable[list[_Header]],
        stamps: Iterable[int | None],
    ) -> list[asyncio.Future[Any]]:
        """Append each message to its partition's batch; send every batch closed.

        An open batch would wait out the producer's linger for messages that
        never come: the sink has already added all it has.
        """
        topic, send = self.topic, producer.send_batch
        builders: list[Any] = [None] * len(partitions)
        futures: list[asyncio.Future[Any]] = []
        for index, key, value, header, ms in zip(
            targets, keys, values, headers, stamps, strict=False
        ):
            builder = builders[index]
            if builder is None:
                builder = builders[index] = producer.create_batch()
            if builder.append(key=key, value=value, headers=header, timestamp=ms) is None:
                builder.close()
                futures.append(await send(builder, topic, partition=partitions[index]))
                builder = builders[index] = producer.create_batch()
                if builder.append(key=key, value=value, headers=header, timestamp=ms) is None:
                    raise DataError("message larger than the producer's batch size")
        for index, builder in enumerate(builders):
            if builder is not None and builder.record_count():
                builder.close()
                futures.append(await send(builder, topic, partition=partitions[index]))
        return futures

    async def flush(self) -> None:
        """Every write already waits for its acknowledgements: nothing is buffered."""
        producer = self._require_open()
        await producer.flush()

    async def aclose(self) -> None:
        """Stop the producer (it sends what it still holds first; abandoned after a bound)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_client(producer.stop, f"sink {self.name!r}")

    def _require_open(self) -> Any:
        if self._producer is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        return self._producer


def _settle(delivered: asyncio.Future[None], acks: asyncio.Future[list[Any]]) -> None:
    """Complete ``delivered`` with the first failure among ``acks`` (as riprap's error), if any."""
    if delivered.done():
        return
    if acks.cancelled():
        delivered.set_exception(KafkaError("the acknowledgements were cancelled"))
        return
    for result in acks.result():
        if isinstance(result, BaseException):
            error = _as_riprap_error(result)
            if error is not result:
                error.__cause__ = result
            delivered.set_exception(error)
            return
    delivered.set_result(None)


def _checked_headers(headers: Headers, index: int) -> list[_Header]:
    """``headers`` as the producer takes them: text names, bytes values (text as UTF-8).

    Raises:
        DataError: A header of message ``index`` is not a (name, value) pair of
            text (or bytes) and bytes (or text, or ``None``).
    """
    checked: list[_Header] = []
    for header in headers:
        pair: Any = header  # whatever the user's function gave
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise DataError(
                f"message {index}: a header must be a (name, value) pair, "
                f"got {type(header).__name__}",
                reason="encode_error",
            ) from None
        try:
            if isinstance(name, bytes):
                name = name.decode()
            if isinstance(value, str):
                value = value.encode()
        except (UnicodeDecodeError, UnicodeEncodeError) as exc:
            raise DataError(
                f"message {index}: header {name!r} is not valid text: {exc.reason}",
                reason="encode_error",
            ) from None
        if not isinstance(name, str) or not (value is None or isinstance(value, bytes)):
            raise DataError(
                f"message {index}: header {name!r} needs a text name and a bytes value, "
                f"got {type(name).__name__} and {type(value).__name__}",
                reason="encode_error",
            )
        checked.append((name, value))
    return checked


def _check_tombstones(keys: Sequence[bytes | None] | None, values: list[bytes | None]) -> None:
    """A message without a value (a tombstone) must have a key.

    Raises:
        DataError: One has neither.
    """
    for i, value in enumerate(values):
        if value is None and (keys is None or keys[i] is None):
            raise DataError("a message needs a key or a value", reason="encode_error")


def _milliseconds(stamps: Sequence[float | None] | None) -> Iterable[int | None]:
    """Timestamps in seconds as the producer's milliseconds (``None``: the producer's clock)."""
    if stamps is None:
        return repeat(None)
    try:  # round(s * 1000) of every timestamp in C, when they are all floats
        return list(map(float.__round__, map(mul, stamps, repeat(1000))))
    except TypeError:  # some are None, or not floats
        return [None if s is None else round(s * 1000) for s in stamps]
