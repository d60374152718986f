"""Reading dead letters back from a Kafka topic: a bounded scan and a replay source.

Bounded reads
    A read assigns itself every partition of the topic (no consumer group:
    nothing is joined and no offset is committed), starts at the beginning, or
    at a replay's checkpointed offset, and stops at the end offsets observed
    when it started, so it finishes even while letters keep arriving.

    Some brokers (Tansu, the test broker) list a partition's end offset as the
    start of its last record batch rather than the offset after it. A
    partition's end is therefore the larger of the listed end offset and the
    high watermark of the first fetch response, and a partition counts as read
    only once one more fetch response came back after its position reached
    that end: whatever that response brings (the rest of a batch, or letters
    written meanwhile) is read too, nothing after it. A read in which no fetch
    response arrives for ``stall_timeout`` seconds fails with ``TimeoutError``.

Repeats
    A letter produced twice (the failing pipeline restarted after a crash
    before its checkpoint, or a producer retry) is read once: readers keep the
    first copy they meet and count the others as repeats folded, in a
    :class:`~riprap.deadletters.LetterIds` (exact, bounded memory). Copies of
    one letter usually share a partition (the message key is the record's
    key); when they do not, which copy comes first depends on how the reader
    interleaves partitions. A resumed replay first reads every partition from
    its beginning up to its checkpointed offset, for the ids only, before
    replaying anything: a letter replayed before the stop is not replayed again
    from a copy after it. That costs one more read of what was replayed.

Errors from Kafka itself are raised as ``OSError`` naming the topic; a topic
that does not exist as ``FileNotFoundError``.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from riprap import ConfigError, SourceBatch, SystemClock
from riprap.deadletters import DeadLetterFilter, LetterIds, TokenBucket, letter_batch

from ._deadletters import letter_from_message, letter_id_of
from ._weight import cut_weights, weights

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping, Sequence

    from riprap import Clock, SourceContext
    from riprap.deadletters import DeadLetter

_FORBIDDEN_OPTIONS = frozenset(
    (
        "bootstrap_servers",
        "group_id",
        "enable_auto_commit",
        "auto_offset_reset",
        "key_deserializer",
        "value_deserializer",
    )
)
_SCAN_CHUNK = 500
_PARTITION_PREFIX = "dlq:kafka:"

log = logging.getLogger("riprap.connectors.kafka")


def replay_partition(topic: str, partition: int) -> str:
    """The replay source's name for a partition of the dead-letter topic."""
    return f"{_PARTITION_PREFIX}{topic}:{partition}"


@dataclass(slots=True)
class _Progress:
    """How far one partition's bounded read has come."""

    tp: Any
    end: int  # the end offset listed when the read started
    limit: int | None = None  # max(end, high watermark of the first fetch response)
    mark: int | None = None  # last fetch response time once the position reached limit


@final
class _BoundedReader:
    """Every partition of a topic, from given offsets up to the end observed at start."""

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str | Sequence[str],
        consumer_options: Mapping[str, Any] | None,
        stall_timeout: float,
    ) -> None:
        options = dict(consumer_options or {})
        clash = sorted(_FORBIDDEN_OPTIONS & options.keys())
        if clash:
            raise ConfigError("consumer_options", f"{clash[0]!r} is set by the dead-letter reader")
        if not stall_timeout > 0:
            raise ConfigError("stall_timeout", f"must be positive, got {stall_timeout!r}")
        self.topic = topic
        self.stall_timeout = stall_timeout
        self._config: dict[str, Any] = {
            "fetch_max_wait_ms": 100,  # an empty fetch answers quickly: the end is seen soon
            **options,
            "bootstrap_servers": bootstrap_servers,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",  # after retention deleted letters: the oldest kept
        }
        self._consumer: Any = None
        self._pending: dict[int, _Progress] = {}
        self._buffer: dict[int, list[Any]] = {}
        self._stamps: dict[int, int | None] = {}
        self._floors: dict[int, int] = {}
        self._progress_at = 0.0

    async def start(self, positions: Mapping[int, int]) -> None:
        """Assign every partition and seek to ``positions`` (the beginning where absent).

        Raises:
            FileNotFoundError: The topic does not exist.
            OSError: Kafka refused or could not be reached.
        """
        consumer = AIOKafkaConsumer(**self._config)
        try:
            tps, ends = await self._assign(consumer, positions)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await consumer.stop()  # safe after a failed start too
            if isinstance(exc, KafkaError):
                raise _store_error(self.topic, exc) from exc
            raise
        self._consumer = consumer
        self._pending = {tp.partition: _Progress(tp, ends[tp]) for tp in tps}
        self._floors = dict(positions)
        self._progress_at = time.monotonic()

    async def _assign(
        self, consumer: Any, positions: Mapping[int, int]
    ) -> tuple[list[Any], dict[Any, int]]:
        await consumer.start()
        await consumer.topics()  # loads the metadata of every topic, creating none
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise FileNotFoundError(errno.ENOENT, "no such topic", f"kafka topic {self.topic}")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends: dict[Any, int] = await consumer.end_offsets(tps)
        for tp in tps:
            if tp.partition in positions:
                consumer.seek(tp, positions[tp.partition])
        fresh = [tp for tp in tps if tp.partition not in positions]
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        return tps, ends

    async def remember_ids(self, stops: Mapping[int, int], seen: LetterIds) -> None:
        """Add to ``seen`` the ids of each partition's messages before its ``stops`` offset.

        A read of its own, from the beginning, before :meth:`start`. A partition
        ends at its stop offset, or at its high watermark if that is lower (the
        topic was recreated).

        Raises:
            OSError: Kafka failed.
            TimeoutError: No fetch response came for ``stall_timeout`` seconds.
            ValueError: A message is not a riprap dead letter.
        """
        wanted = {partition: stop for partition, stop in stops.items() if stop > 0}
        if not wanted:
            await anyio.lowlevel.checkpoint()
            return
        consumer = AIOKafkaConsumer(**self._config)
        try:
            await consumer.start()
            await consumer.topics()
            known = consumer.partitions_for_topic(self.topic) or set()
            tps = {p: TopicPartition(self.topic, p) for p in wanted if p in known}
            if not tps:
                return
            consumer.assign(list(tps.values()))
            await consumer.seek_to_beginning(*tps.values())
            await self._scan_ids(consumer, tps, wanted, seen)
        except KafkaError as exc:
            raise _store_error(self.topic, exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await consumer.stop()

    async def _scan_ids(
        self,
        consumer: Any,
        tps: Mapping[int, Any],
        stops: Mapping[int, int],
        seen: LetterIds,
    ) -> None:
        pending = dict(tps)
        progress_at = time.monotonic()
        while pending:
            for partition, tp in list(pending.items()):
                highwater = consumer.highwater(tp)
                stop = stops[partition] if highwater is None else min(stops[partition], highwater)
                if await consumer.position(tp) >= stop:
                    del pending[partition]
            if not pending:
                return
            fetched = await consumer.getmany(
                *pending.values(), timeout_ms=100, max_records=_SCAN_CHUNK
            )
            for tp, records in fetched.items():
                for record in records:
                    if record.offset >= stops[tp.partition]:
                        break
                    seen.add(_letter_id(self.topic, record))
                progress_at = time.monotonic()
            if time.monotonic() - progress_at > self.stall_timeout:
                raise TimeoutError(
                    f"kafka topic {self.topic!r}: no fetch response for partitions"
                    f" {sorted(pending)} in {self.stall_timeout:g} s"
                )

    async def next_chunk(
        self, max_records: int, max_bytes: int | None = None
    ) -> tuple[int, list[Any], list[int]] | None:
        """Up to ``max_records`` consecutive messages of one partition, with what each
        weighs (see ``_weight``); ``None`` at the end.

        With ``max_bytes``, the chunk ends with the message that brings it to
        that many bytes (at least one message).

        Raises:
            OSError: Kafka failed.
            TimeoutError: No fetch response came for ``stall_timeout`` seconds.
        """
        while True:
            chunk = self._take(max_records, max_bytes)
            if chunk is not None or not self._pending:
                return chunk
            try:
                await self._fetch(max_records)
            except KafkaError as exc:
                raise _store_error(self.topic, exc) from exc

    async def aclose(self) -> None:
        """Stop the consumer (it commits nothing: it belongs to no group)."""
        consumer, self._consumer = self._consumer, None
        self._buffer.clear()
        self._pending.clear()
        self._stamps.clear()
        self._floors.clear()
        if consumer is not None:
            await consumer.stop()
        else:
            await anyio.lowlevel.checkpoint()

    def _take(
        self, max_records: int, max_bytes: int | None
    ) -> tuple[int, list[Any], list[int]] | None:
        partition = next(iter(self._buffer), None)
        if partition is None:
            return None
        records = self._buffer.pop(partition)
        sizes = weights(records[:max_records])
        count = len(sizes)
        if max_bytes is not None:
            count, _ = cut_weights(sizes, max_bytes)
        if len(records) > count:  # re-inserted last: partitions take turns
            self._buffer[partition] = records[count:]
        return partition, records[:count], sizes[:count]

    async def _fetch(self, max_records: int) -> None:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError(f"reader of kafka topic {self.topic!r} is not started")
        tps = [progress.tp for progress in self._pending.values()]
        fetched = await consumer.getmany(*tps, timeout_ms=100, max_records=max_records)
        moved = self._keep(fetched)
        for progress in list(self._pending.values()):
            moved = await self._settle(progress) or moved
            stamp = consumer.last_poll_timestamp(progress.tp)
            moved = moved or stamp != self._stamps.get(progress.tp.partition)
            self._stamps[progress.tp.partition] = stamp
        now = time.monotonic()
        if moved:
            self._progress_at = now
        elif now - self._progress_at > self.stall_timeout:
            raise TimeoutError(
                f"kafka topic {self.topic!r}: no fetch response for partitions"
                f" {sorted(self._pending)} in {self.stall_timeout:g} s"
            )

    def _keep(self, fetched: Mapping[Any, list[Any]]) -> bool:
        """Buffer fetched records at or after each partition's start; whether any came."""
        kept = False
        for tp, records in fetched.items():
            floor = self._floors.get(tp.partition, 0)
            if records and records[0].offset < floor:
                # An offset reset (the topic was recreated?) served records from before
                # the position this read started at: they were read before, or are not
                # the letters that position counted. Say so instead of reading them.
                log.warning(
                    "kafka topic %r partition %d: the broker served offset %d, before the"
                    " start position %d (was the topic recreated?); skipping to %d",
                    self.topic,
                    tp.partition,
                    records[0].offset,
                    floor,
                    floor,
                )
                records = [record for record in records if record.offset >= floor]
            if records:
                self._buffer.setdefault(tp.partition, []).extend(records)
                kept = True
        return kept

    async def _settle(self, progress: _Progress) -> bool:
        """Finish the partition once a fetch came back after its end; whether records came."""
        consumer = self._consumer
        tp = progress.tp
        if progress.limit is None:
            highwater = consumer.highwater(tp)
            if highwater is None:
                return False  # no fetch response yet
            progress.limit = max(progress.end, highwater)
        if await consumer.position(tp) < progress.limit:
            return False
        stamp = consumer.last_poll_timestamp(tp)
        if progress.mark is None:
            progress.mark = stamp  # wait for one more fetch response
            return False
        if stamp is None or stamp <= progress.mark:
            return False
        kept = False
        while True:  # what that response brought is buffered by now: take all of it
            drained = await consumer.getmany(tp, timeout_ms=0)
            if not self._keep(drained):
                break
            kept = True
        consumer.pause(tp)
        del self._pending[tp.partition]
        return kept


def _store_error(topic: str, exc: KafkaError) -> OSError:
    text = str(exc)
    if not text.startswith(type(exc).__name__):  # aiokafka's own messages often name it
        text = f"{type(exc).__name__}: {text}"
    return OSError(f"kafka topic {topic!r}: {text}")


def _letter_id(topic: str, record: Any) -> str:
    try:
        return letter_id_of(list(record.headers))
    except ValueError as exc:
        raise ValueError(
            f"kafka topic {topic!r} partition {record.partition} offset {record.offset}: {exc}"
        ) from None


def _letter(topic: str, record: Any) -> DeadLetter:
    try:
        return letter_from_message(record.key, record.value, list(record.headers))
    except ValueError as exc:
        raise ValueError(
            f"kafka topic {topic!r} partition {record.partition} offset {record.offset}: {exc}"
        ) from None


async def iter_kafka_dead_letters(
    topic: str,
    *,
    bootstrap_servers: str | Sequence[str],
    consumer_options: Mapping[str, Any] | None = None,
    stall_timeout: float = 30.0,
    seen: LetterIds | None = None,
) -> AsyncGenerator[DeadLetter, None]:
    """Every dead letter on ``topic`` up to the end observed at start, one per id.

    A bounded read (see the module docstring): no group, no commit; partitions
    take turns. A repeat of a letter already read is skipped and counted in
    ``seen.repeats``. Close the generator when leaving early
    (``contextlib.aclosing``).

    Args:
        topic: The dead-letter topic.
        bootstrap_servers: ``host:port`` of one or more brokers.
        consumer_options: Further ``AIOKafkaConsumer`` keyword arguments.
        stall_timeout: Seconds without a fetch response before the read fails.
        seen: Keeps the ids read; a private one when ``None``.

    Raises:
        FileNotFoundError: The topic does not exist.
        OSError: Kafka failed.
        TimeoutError: No fetch response came for ``stall_timeout`` seconds.
        ValueError: A message is not a riprap dead letter; the message names
            its partition and offset.

    .. versionadded:: 0.1
    """
    reader = _BoundedReader(topic, bootstrap_servers, consumer_options, stall_timeout)
    ids = LetterIds() if seen is None else seen
    try:
        await reader.start({})
        while (chunk := await reader.next_chunk(_SCAN_CHUNK)) is not None:
            for record in chunk[1]:
                letter = _letter(topic, record)
                if ids.add(letter.id):
                    yield letter
    finally:
        await reader.aclose()
        if seen is None:
            ids.close()


@final
class KafkaDeadLetterSource:
    """Replays the letters of a dead-letter topic: their original records, as consumed.

    One riprap partition per topic-partition, named
    ``dlq:kafka:<topic>:<partition>``; positions are Kafka offsets (a batch
    ends at the offset after the last message it scanned). Offsets never
    change meaning, so a replay's checkpoint says exactly which messages are
    done, and a second replay under the same pipeline name resumes there and
    sends only letters produced since. Letters deleted by retention between
    two runs are no longer read (the read starts at the oldest kept).

    Each run is a bounded read (see the module docstring): it ends at the end
    observed when it opened, commits nothing to Kafka and joins no group.
    Letters the filter rejects are skipped but their offsets are passed. A
    letter produced twice is replayed once: its repeats are skipped, their
    offsets passed, and counted as the source outcome ``repeats_folded``; a
    resumed replay first reads the ids before its positions (see the module
    docstring).

    Args:
        topic: The dead-letter topic (written by
            :class:`~riprap.connectors.kafka.KafkaDeadLetters`).
        bootstrap_servers: ``host:port`` of one or more brokers.
        filter: Which letters to replay; all when ``None``.
        rate_limit: At most this many records per second; unlimited when ``None``.
        name: The step name of the source.
        clock: Paces the rate limit (a virtual clock in tests).
        consumer_options: Further ``AIOKafkaConsumer`` keyword arguments
            (security, fetch sizes).
        stall_timeout: Seconds without a fetch response before the read fails.
        id_header: When given, each record also carries the letter's id in a
            header of that name (a replay to a topic marks its messages so).

    Raises:
        ConfigError: An impossible rate limit or stall timeout, or a consumer
            option the source sets itself.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``id_header``.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap_servers: str | Sequence[str],
        filter: DeadLetterFilter | None = None,
        rate_limit: float | None = None,
        name: str = "dlq-replay",
        clock: Clock | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        stall_timeout: float = 30.0,
        id_header: str | None = None,
    ) -> None:
        self.topic = topic
        self.name = name
        self._id_header = id_header
        self._reader = _BoundedReader(topic, bootstrap_servers, consumer_options, stall_timeout)
        self._filter = filter or DeadLetterFilter()
        self._bucket = (
            None if rate_limit is None else TokenBucket(rate_limit, clock or SystemClock())
        )
        self._seen = LetterIds()
        self._context: SourceContext | None = None
        self._reported = 0

    async def open(self, context: SourceContext) -> None:
        """Start reading every partition after its checkpointed offset (from the start if none).

        The messages before the checkpointed offsets are read first, for their ids.

        Raises:
            FileNotFoundError: The topic does not exist.
            OSError: Kafka failed.
            TimeoutError: No fetch response came for ``stall_timeout`` seconds.
            ValueError: A message before the offsets is not a riprap dead letter.
        """
        prefix = f"{_PARTITION_PREFIX}{self.topic}:"
        positions = {
            int(name[len(prefix) :]): position
            for name, position in context.positions.items()
            if name.startswith(prefix) and name[len(prefix) :].isdigit()
        }
        await self.aclose()  # reopening starts a fresh read
        self._seen = LetterIds()
        await self._reader.remember_ids(positions, self._seen)
        await self._reader.start(positions)
        self._context = context
        self._reported = self._seen.repeats  # an earlier run counted those

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next at most ``max_records`` matching letters' records of one partition.

        A stretch of letters the filter rejects yields an empty batch that
        moves the position past them; ``None`` once every partition is read
        to its end.

        Raises:
            OSError: Kafka failed.
            TimeoutError: No fetch response came for ``stall_timeout`` seconds.
            ValueError: A message is not a riprap dead letter, or its payload
                cannot be decoded.
        """
        if self._bucket is not None:
            max_records = min(max_records, self._bucket.burst)
        max_bytes = None if self._context is None else self._context.max_batch_bytes
        chunk = await self._reader.next_chunk(max(1, max_records), max_bytes)
        if chunk is None:
            return None
        partition, records, sizes = chunk
        name = replay_partition(self.topic, partition)
        end = records[-1].offset + 1
        found: list[tuple[int, DeadLetter]] = []
        nbytes = 0
        for record, weight in zip(records, sizes, strict=True):
            letter = _letter(self.topic, record)
            if self._seen.add(letter.id) and self._filter.matches(letter):
                found.append((record.offset, letter))
                nbytes += weight
        folded = self._seen.repeats - self._reported
        if folded and self._context is not None:
            self._reported = self._seen.repeats
            self._context.count("repeats_folded", folded)
        if not found:  # an empty batch still moves the position past the skipped letters
            return SourceBatch(name, [], start=records[0].offset, end=end)
        if self._bucket is not None:
            await self._bucket.acquire(len(found))
        return letter_batch(name, found, end=end, id_header=self._id_header, nbytes=nbytes)

    async def aclose(self) -> None:
        """Stop the consumer and forget the ids read."""
        self._seen.close()
        await self._reader.aclose()
