"""Keyed state logged to a compacted Kafka topic, so a partition's state follows the partition.

The changelog of a pipeline is one topic with as many partitions as its
source topics have: source partition ``orders:3`` logs to changelog partition
3. Each record's key names the source partition, the step and the state key
(``[partition, step, token]`` in JSON), its value is the stored value (or a
tombstone for a delete), so compaction keeps each key's last value. A commit
ends with a *mark* per source partition (key ``[partition]``, value its
position); a restore reads the changelog partition from its start and takes
the changes up to the source partition's last mark. Changes after it belong
to a commit that a crash cut short: the restore drops them and writes the
values they replaced back (then the mark again), so that compaction cannot
later keep an unfinished change in place of a committed one. A restore may
start at an offset (a local copy's): it then returns the changes after it.

No Kafka transactions: a member frozen past its session timeout that wakes
in the middle of a commit can still log that commit after the partition's
next owner restored it (Kafka fences its offset commit, not its produce).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

import anyio
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from riprap import ConfigError
from riprap.state import RestoredState, StateStoreError

from ._closing import stop_client
from ._codecs import parse_partition

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

log = logging.getLogger("riprap.state")

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_FORBIDDEN_OPTIONS = frozenset({"bootstrap_servers", "enable_idempotence", "acks"})
_READ_BATCH = 10_000
"""Records one fetch of a restore returns at most."""
_FETCH_WAIT_MS = 20
"""How long the broker may hold a restore's fetch for more data (Kafka's default, 500 ms,
would be spent in full on every changelog partition that has caught up, or is empty)."""

Stored = tuple[str, float | None]


@final
class KafkaChangelog:
    """A pipeline's keyed state logged to a compacted topic (``Pipeline(changelog=...)``).

    With it, a keyed-state step's state of source partition P is restored from
    the changelog by whichever process is given P, and
    :class:`KafkaCheckpoints` accepts the pipeline. The topic is created on
    first use (``cleanup.policy=compact``, as many partitions as the largest
    source topic); one that exists must have at least as many partitions.

    Args:
        bootstrap_servers: ``host:port`` of one or more brokers.
        topic: The changelog topic (default ``riprap-<pipeline>-changelog``).
        accept_behind: Start a partition whose last commit is behind where its
            source resumes (its group offsets were moved on, or the topic was
            deleted) with the state it has, instead of stopping the run.
        replication_factor: Of the topic, when riprap creates it.
        restore_timeout: Seconds one partition's restore may take.
        producer_options: Further ``AIOKafkaProducer`` keyword arguments (security, ...).
        consumer_options: Further ``AIOKafkaConsumer`` keyword arguments for restores.

    Raises:
        ConfigError: An invalid topic name, a bound below 1, or an option this
            changelog sets itself.

    Attributes:
        restored_records: Changelog records the restores of this run read (a
            step's local copy in a :class:`~riprap.state.SqliteStore` spares them).

    .. versionadded:: 0.4
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        topic: str | None = None,
        accept_behind: bool = False,
        replication_factor: int = 1,
        restore_timeout: float = 300.0,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if topic is not None and not _TOPIC.fullmatch(topic):
            raise ConfigError("topic", f"not a Kafka topic name: {topic!r}")
        if replication_factor < 1:
            raise ConfigError("replication_factor", f"must be >= 1, got {replication_factor}")
        if not restore_timeout > 0:
            raise ConfigError("restore_timeout", f"must be > 0 seconds, got {restore_timeout!r}")
        for option, given in (
            ("producer_options", producer_options),
            ("consumer_options", consumer_options),
        ):
            clash = sorted(_FORBIDDEN_OPTIONS & set(given or {}))
            if clash:
                raise ConfigError(option, f"{clash[0]!r} is set by the changelog itself")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.accept_behind = accept_behind
        self.replication_factor = replication_factor
        self.restore_timeout = restore_timeout
        self._producer_options = dict(producer_options or {})
        self._consumer_options = dict(consumer_options or {})
        self._producer: Any = None
        self._consumer: Any = None
        self._pending: list[asyncio.Future[Any]] = []
        self._marks: dict[str, asyncio.Future[Any]] = {}
        """Per partition written since the last flush: its mark's send."""
        self.restored_records = 0
        """Changelog records read by restores (a local copy spares most of them)."""
        self._partitions: int | None = None
        """Partitions of the changelog topic, once known."""

    async def open(self, pipeline: str) -> None:
        """Name the topic after ``pipeline`` (unless given) and start the producer.

        Raises:
            ConfigError: The pipeline's name does not make a valid topic name.
        """
        if self.topic is None:
            name = f"riprap-{pipeline}-changelog"
            if not _TOPIC.fullmatch(name):
                raise ConfigError(
                    "changelog.topic",
                    f"pipeline name {pipeline!r} makes no valid topic name; pass topic=",
                )
            self.topic = name
        producer = AIOKafkaProducer(
            **self._producer_options,
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=False,
        )
        await producer.start()
        self._producer = producer

    async def restore(self, partition: str, since: int | None = None) -> RestoredState:
        """Read source ``partition``'s values up to its last mark; repair an unfinished tail.

        With ``since``, only the changes after that offset, when the topic still
        holds it and nothing after it is unfinished; else the whole state.

        Raises:
            StateStoreError: The changelog topic has fewer partitions than the
                source topic, or a record of it cannot be read.
            TimeoutError: The restore took longer than ``restore_timeout``.
        """
        source_topic, number = _parse(partition)
        await self._ensure_topic(source_topic, number)
        with anyio.fail_after(self.restore_timeout):
            if since is not None:
                read = await self._read(partition, number, since)
                if read is not None and not read.tail:
                    self.restored_records += read.records
                    return RestoredState(
                        position=read.position,
                        values=read.values,
                        offset=read.offset,
                        complete=False,
                    )
            read = await self._read(partition, number, None)
        assert read is not None
        self.restored_records += read.records
        if read.tail:
            await self._repair(partition, number, read)
        return RestoredState(position=read.position, values=read.values, offset=read.offset)

    async def write(
        self,
        partition: str,
        changes: Mapping[str, Mapping[str, Stored | None]],
        position: int,
    ) -> None:
        """Send each step's changes of ``partition``, then its mark; durable after :meth:`flush`."""
        _, number = _parse(partition)
        records: list[tuple[bytes, bytes | None]] = []
        for step_id, tokens in changes.items():
            for token, entry in tokens.items():
                value = None if entry is None else orjson.dumps(entry)
                records.append((orjson.dumps([partition, step_id, token]), value))
        if records:
            self._pending.append(await self._send(records, number))
        mark = [(orjson.dumps([partition]), orjson.dumps({"position": position}))]
        self._marks[partition] = await self._send(mark, number)  # alone: its offset is the batch's

    async def flush(self) -> dict[str, int]:
        """Wait for every record sent since the last flush; raise the first failure.

        Returns, per partition written, the offset just past its mark.
        """
        pending, self._pending = self._pending, []
        marks, self._marks = self._marks, {}
        if pending or marks:
            await asyncio.gather(*pending, *marks.values())
        return {partition: future.result().offset + 1 for partition, future in marks.items()}

    async def aclose(self) -> None:
        """Stop the producer; records not flushed are not committed."""
        producer, self._producer = self._producer, None
        consumer, self._consumer = self._consumer, None
        self._pending, self._marks = [], {}
        try:
            if consumer is not None:
                await stop_client(consumer.stop, "changelog restore")
        finally:
            if producer is not None:
                await stop_client(producer.stop, "changelog")

    # -- internals -----------------------------------------------------------------

    def _require_open(self) -> Any:
        if self._producer is None or self.topic is None:
            raise RuntimeError("the changelog is used before open() or after aclose()")
        return self._producer

    async def _send(
        self, records: Sequence[tuple[bytes, bytes | None]], number: int
    ) -> asyncio.Future[Any]:
        """Send ``records`` to changelog partition ``number`` in order; the last batch's future.

        Every batch but the last goes to ``_pending``: one partition's batches
        are sent in order, so the last one's acknowledgement comes last.
        """
        producer = self._require_open()
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                self._pending.append(await producer.send_batch(batch, self.topic, partition=number))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise StateStoreError(
                        f"changelog {self.topic!r}",
                        "a state value is larger than the producer's max_batch_size",
                    )
        batch.close()
        future: asyncio.Future[Any] = await producer.send_batch(batch, self.topic, partition=number)
        return future

    async def _ensure_topic(self, source_topic: str, number: int) -> None:
        """Create the changelog topic if missing; check it has a partition for ``number``."""
        if self._partitions is None or number >= self._partitions:
            producer = self._require_open()
            wanted = len(await producer.partitions_for(source_topic))
            existing = await self._topic_partitions()
            if existing is None:
                await self._create(max(wanted, number + 1))
                existing = await self._topic_partitions()
            self._partitions = existing
        if self._partitions is None or number >= self._partitions:
            raise StateStoreError(
                f"changelog {self.topic!r}",
                f"has {self._partitions or 0} partitions, but source topic {source_topic!r} has "
                f"partition {number}: give it as many partitions as the source topics have",
            )

    async def _topic_partitions(self) -> int | None:
        """The changelog topic's partition count, ``None`` when it does not exist."""
        producer = self._require_open()
        topics = await producer.client.fetch_all_metadata()
        partitions = topics.partitions_for_topic(self.topic)
        return None if not partitions else len(partitions)

    async def _create(self, partitions: int) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            **{
                k: v
                for k, v in self._producer_options.items()
                if k.startswith(("security", "sasl", "ssl"))
            },
        )
        await admin.start()
        try:
            response = await admin.create_topics(
                [
                    NewTopic(
                        self.topic,
                        partitions,
                        self.replication_factor,
                        topic_configs={"cleanup.policy": "compact"},
                    )
                ]
            )
        finally:
            await admin.close()
        for _, code, *rest in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):  # another member made it first
                message = rest[0] if rest else ""
                raise StateStoreError(
                    f"changelog {self.topic!r}", f"could not be created (error {code}: {message})"
                )
        log.info("changelog topic %s created with %d partitions", self.topic, partitions)

    async def _read(self, partition: str, number: int, since: int | None) -> _Read | None:
        """Read changelog partition ``number`` from ``since`` (or its start) for ``partition``.

        ``None`` when ``since`` is outside what the topic holds (compacted or
        deleted away, or the topic was made anew): the caller reads it all.
        """
        consumer = await self._reader()
        try:
            tp = TopicPartition(self.topic, number)
            consumer.assign([tp])
            if since is None:
                await consumer.seek_to_beginning(tp)
            else:
                earliest = (await consumer.beginning_offsets([tp]))[tp]
                if since < earliest:
                    return None
                consumer.seek(tp, since)
            read = _Read(complete=since is None)
            pending: dict[str, dict[str, Stored | None]] = {}
            while True:
                fetched = await consumer.getmany(tp, timeout_ms=50, max_records=_READ_BATCH)
                for message in fetched.get(tp, ()):
                    read.records += 1
                    marked = self._take(partition, message, pending)
                    if marked is not None:
                        _fold(read.values, pending, keep_deletes=not read.complete)
                        pending = {}
                        read.position, read.offset = marked, message.offset + 1
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                if since is not None and since > highwater:
                    return None  # the topic was made anew: the offset means nothing here
                if await consumer.position(tp) >= highwater:
                    read.tail = pending
                    return read
        finally:
            consumer.unsubscribe()  # the next restore assigns its own partition

    async def _reader(self) -> Any:
        """The consumer restores read with, started on first use (no group: it assigns)."""
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **{"fetch_max_wait_ms": _FETCH_WAIT_MS, **self._consumer_options},
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                group_id=None,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    def _take(
        self, partition: str, message: Any, tail: dict[str, dict[str, Stored | None]]
    ) -> int | None:
        """Add ``message`` to ``tail`` if it is a change of ``partition``; a mark's position."""
        try:
            key = orjson.loads(message.key)
            if key[0] != partition:
                return None  # another source topic's partition of the same number
            if len(key) == 1:
                return int(orjson.loads(message.value)["position"])
            _, step_id, token = key
            entry = None if message.value is None else orjson.loads(message.value)
            tail.setdefault(step_id, {})[token] = (
                None if entry is None else (str(entry[0]), entry[1])
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise StateStoreError(
                f"changelog {self.topic!r}",
                f"record at offset {message.offset} of partition {message.partition} is not "
                f"a riprap changelog record ({type(exc).__name__}): is the topic shared?",
            ) from exc
        return None

    async def _repair(self, partition: str, number: int, read: _Read) -> None:
        """Write back what an unfinished commit's changes replaced, then the last mark again."""
        position, values, tail = read.position, read.values, read.tail
        undone = {
            step_id: {token: values.get(step_id, {}).get(token) for token in tokens}
            for step_id, tokens in tail.items()
        }
        count = sum(len(tokens) for tokens in undone.values())
        log.info(
            "changelog %s: %d changes of %s after its last commit were cut short; undone",
            self.topic,
            count,
            partition,
        )
        if position is None:
            records = [
                (orjson.dumps([partition, step_id, token]), None)
                for step_id, tokens in undone.items()
                for token in tokens
            ]
            self._pending.append(await self._send(records, number))
            await self.flush()
        else:
            await self.write(partition, undone, position)
            read.offset = (await self.flush())[partition]


def _parse(partition: str) -> tuple[str, int]:
    """The source topic and partition number of ``partition`` (``member/topic:3`` in a merge)."""
    try:
        return parse_partition(partition.rpartition("/")[2])  # no "/" in a topic name
    except ValueError as exc:
        raise ConfigError(
            "changelog", f"{exc}: a KafkaChangelog keeps the state of Kafka partitions"
        ) from exc


@dataclass(slots=True)
class _Read:
    """What a read of one source partition's changes found."""

    complete: bool
    """Read from the start: ``values`` is the whole state (else changes, deletes as ``None``)."""
    values: dict[str, dict[str, Stored | None]] = field(default_factory=dict)
    position: int | None = None
    """The last mark's position."""
    offset: int | None = None
    """The offset just past the last mark."""
    tail: dict[str, dict[str, Stored | None]] = field(default_factory=dict)
    """Changes after the last mark: an unfinished commit."""
    records: int = 0
    """Records read."""


def _fold(
    values: dict[str, dict[str, Stored | None]],
    changes: Mapping[str, Mapping[str, Stored | None]],
    *,
    keep_deletes: bool,
) -> None:
    """Apply a complete commit's changes to ``values`` (keeping deletes as ``None``, if asked)."""
    for step_id, tokens in changes.items():
        target = values.setdefault(step_id, {})
        for token, entry in tokens.items():
            if entry is None and not keep_deletes:
                target.pop(token, None)
            else:
                target[token] = entry
