"""The Kafka source: one riprap partition per topic-partition, offsets committed on checkpoint."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Literal, final

import anyio
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from riprap import ConfigError, SourceBatch

from ._codecs import lag_by_partition, parse_partition, partition_name

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from riprap import SourceContext

log = logging.getLogger("riprap.connectors.kafka")

_FORBIDDEN_OPTIONS = frozenset(
    ("bootstrap_servers", "group_id", "enable_auto_commit", "max_poll_records", "auto_offset_reset")
)


@final
class KafkaSource:
    """Reads topics as a member of a consumer group; commits only checkpointed positions.

    Partitions are named ``"topic:partition"`` (for example ``"orders:3"``);
    that name keys checkpoints, metrics and dead letters. A record's offset is
    its Kafka offset and a batch's ``end`` is the last offset + 1, so a
    checkpointed position is exactly the offset Kafka expects in a commit.

    Values and keys are handed over as the raw bytes consumed. Decoding belongs
    in a step (``.map("decode", json_value)``): a message that cannot be
    decoded is then one record's :class:`~riprap.DecodeError`, dead-lettered
    with its original bytes and headers, and the source goes on.

    Memory stays bounded: at most ``max_buffered`` records wait in the source
    between polls, and a partition holding ``max_poll_records`` or more of them
    is paused (its fetching stops) until its buffer is empty again.

    Offsets: auto-commit is off. :meth:`committed` (called by the engine after
    each durable checkpoint) commits those positions for the partitions this
    member owns, and nothing else. On assignment a partition starts at the
    pipeline's checkpointed position when there is one, else at the group's
    committed offset, else at ``auto_offset_reset``.

    Rebalances: a revoked partition's buffered records are dropped and never
    handed out; records of it already in flight finish, but their positions
    are no longer committed by this member. The new owner reads from the
    group's committed offset, so records after it are read again: delivery is
    at-least-once.

    Args:
        topics: A topic or topics to subscribe to (or use ``pattern``).
        pattern: A regular expression of topic names to subscribe to.
        bootstrap_servers: ``host:port`` of one or more brokers.
        group_id: The consumer group.
        name: The step name of the source.
        max_poll_records: Most records one poll returns; also the per-partition
            buffer size at which the partition is paused.
        max_buffered: Most records buffered in the source (default twice
            ``max_poll_records``).
        poll_timeout: Seconds one poll waits for records before trying again.
        commit_timeout: Seconds an offset commit may take.
        drain_timeout: Seconds a revoked partition's records in flight get to
            finish before its position is committed and it is released.
        auto_offset_reset: Where a partition with no position starts:
            ``"earliest"`` (default: nothing is skipped) or ``"latest"``.
        consumer_options: Further ``AIOKafkaConsumer`` keyword arguments
            (security, session timeouts, ...).

    Raises:
        ConfigError: Neither or both of ``topics`` and ``pattern``, a bound
            below 1, or an option this source controls itself.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        topics: str | Sequence[str] = (),
        *,
        pattern: str | None = None,
        bootstrap_servers: str | Sequence[str],
        group_id: str,
        name: str = "kafka",
        max_poll_records: int = 500,
        max_buffered: int | None = None,
        poll_timeout: float = 0.1,
        commit_timeout: float = 30.0,
        drain_timeout: float = 30.0,
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.topics = (topics,) if isinstance(topics, str) else tuple(topics)
        if bool(self.topics) == (pattern is not None):
            raise ConfigError("topics", "give either topics or a pattern, not both or neither")
        if max_poll_records < 1:
            raise ConfigError("max_poll_records", f"must be at least 1, not {max_poll_records}")
        self.max_buffered = 2 * max_poll_records if max_buffered is None else max_buffered
        if self.max_buffered < 1:
            raise ConfigError("max_buffered", f"must be at least 1, not {self.max_buffered}")
        options = dict(consumer_options or {})
        clash = sorted(_FORBIDDEN_OPTIONS & options.keys())
        if clash:
            raise ConfigError("consumer_options", f"set {clash[0]!r} with its own argument")
        self.name = name
        self.pattern = pattern
        self.group_id = group_id
        self.max_poll_records = max_poll_records
        self._poll_ms = max(1, round(poll_timeout * 1000))
        self._commit_timeout = commit_timeout
        self._matcher = re.compile(pattern) if pattern is not None else None
        self._config: dict[str, Any] = {
            **options,
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "enable_auto_commit": False,
            "max_poll_records": max_poll_records,
            "auto_offset_reset": auto_offset_reset,
        }
        self._consumer: Any = None
        self._buffer: dict[Any, list[Any]] = {}
        self._buffered = 0
        self._paused: set[Any] = set()
        self._positions: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self._committed: dict[Any, int] = {}
        self._context: SourceContext | None = None
        self.drain_timeout = drain_timeout

    # -- lifecycle ---------------------------------------------------------------

    async def open(self, context: SourceContext) -> None:
        """Join the group; assigned partitions resume from checkpointed positions."""
        self._context = context
        self._positions = {p: v for p, v in context.positions.items() if self.owns(p)}
        self._next = dict(self._positions)
        consumer = AIOKafkaConsumer(**self._config)
        listener = _Listener(self)
        if self._matcher is not None:
            consumer.subscribe(pattern=self.pattern, listener=listener)
        else:
            consumer.subscribe(topics=list(self.topics), listener=listener)
        self._consumer = consumer
        await consumer.start()

    async def aclose(self) -> None:
        """Leave the group and stop the consumer (committing nothing)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        self._buffer.clear()
        self._buffered = 0
        self._paused.clear()

    # -- reading -----------------------------------------------------------------

    async def read(self, max_records: int) -> SourceBatch | None:
        """Up to ``max_records`` records of one partition; waits until there are some.

        Never returns ``None``: a topic has no end. Partitions take turns.
        """
        consumer = self._require_open()
        while True:
            if self._buffered < self.max_buffered:
                timeout = 0 if self._buffered else self._poll_ms
                fetched = await consumer.getmany(
                    timeout_ms=timeout,
                    max_records=min(self.max_poll_records, self.max_buffered - self._buffered),
                )
                self._add(fetched)
            else:
                await anyio.lowlevel.checkpoint()
            batch = self._take(max_records)
            if batch is not None:
                return batch

    def _add(self, fetched: Mapping[Any, list[Any]]) -> None:
        assigned = self._consumer.assignment()
        for tp, records in fetched.items():
            if not records or tp not in assigned:
                continue  # revoked while the poll was in flight: the new owner reads them
            buffer = self._buffer.setdefault(tp, [])
            buffer.extend(records)
            self._buffered += len(records)
            if len(buffer) >= self.max_poll_records and tp not in self._paused:
                self._consumer.pause(tp)
                self._paused.add(tp)

    def _take(self, max_records: int) -> SourceBatch | None:
        tp = next((tp for tp, buffer in self._buffer.items() if buffer), None)
        if tp is None:
            return None
        buffer = self._buffer[tp]
        records, rest = buffer[:max_records], buffer[max_records:]
        # Re-insert at the end so that partitions take turns.
        del self._buffer[tp]
        if rest:
            self._buffer[tp] = rest
        elif tp in self._paused:
            self._paused.discard(tp)
            self._consumer.resume(tp)
        self._buffered -= len(records)
        name = partition_name(tp.topic, tp.partition)
        self._next[name] = records[-1].offset + 1
        return SourceBatch(
            name,
            [r.value for r in records],
            start=records[0].offset,
            end=records[-1].offset + 1,
            offsets=[r.offset for r in records],
            keys=[r.key for r in records],
            headers=[r.headers for r in records],
            timestamps=[None if r.timestamp is None else r.timestamp / 1000 for r in records],
        )

    # -- offsets -----------------------------------------------------------------

    async def committed(self, positions: Mapping[str, int]) -> None:
        """Commit checkpointed ``positions`` as the group's offsets, for owned partitions only.

        A failed commit is logged and left to the next checkpoint: the
        checkpoint, not the group offset, is what this pipeline resumes from.
        """
        try:
            await self.commit(positions)
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "source %s: committing offsets of group %s failed (%s: %s); "
                "the next checkpoint commits again",
                self.name,
                self.group_id,
                type(exc).__name__,
                exc,
            )

    async def commit(self, positions: Mapping[str, int]) -> None:
        """Commit ``positions`` of owned partitions as the group's offsets; raise on failure.

        Raises:
            aiokafka.errors.KafkaError: The group refused the commit (for example after a
                rebalance).
            TimeoutError: The commit took longer than ``commit_timeout``.
        """
        consumer = self._consumer
        for partition, position in positions.items():
            if self.owns(partition):
                self._positions[partition] = position
        if consumer is None:
            return
        offsets: dict[Any, int] = {}
        for tp in consumer.assignment():
            offset = positions.get(partition_name(tp.topic, tp.partition))
            if offset is not None and self._committed.get(tp) != offset:
                offsets[tp] = offset
        if not offsets:
            return
        with anyio.fail_after(self._commit_timeout):
            await consumer.commit(offsets)
        self._committed.update(offsets)

    def lag(self) -> dict[str, int]:
        """Records behind the end of each assigned partition (from the last fetch)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        ends: dict[str, int | None] = {}
        positions: dict[str, int | None] = {}
        for tp in consumer.assignment():
            name = partition_name(tp.topic, tp.partition)
            ends[name] = consumer.highwater(tp)
            buffer = self._buffer.get(tp)
            positions[name] = buffer[0].offset if buffer else self._next.get(name)
        return lag_by_partition(ends, positions)

    def owns(self, partition: str) -> bool:
        """Whether a partition name belongs to this source's topics."""
        try:
            topic, _ = parse_partition(partition)
        except ValueError:
            return False
        if self._matcher is not None:
            return self._matcher.fullmatch(topic) is not None
        return topic in self.topics

    # -- rebalances --------------------------------------------------------------

    async def _revoked(self, revoked: Sequence[Any]) -> None:
        """Give partitions up: hand out nothing more, drain and commit, then forget them.

        Records of the partitions still waiting in the buffer are dropped (the
        next owner reads them); records already in the pipeline get up to
        ``drain_timeout`` to finish, then their positions are checkpointed and
        committed before the partitions are released, so no record is
        committed by two members.
        """
        names = [partition_name(tp.topic, tp.partition) for tp in revoked]
        for tp in revoked:
            dropped = self._buffer.pop(tp, [])
            self._buffered -= len(dropped)
            self._paused.discard(tp)
        if self._context is not None and names:
            await self._context.drain(names, self.drain_timeout)
        for tp, name in zip(revoked, names, strict=True):
            self._committed.pop(tp, None)
            self._next.pop(name, None)
            self._positions.pop(name, None)  # the next owner's commits are the truth now

    def _assigned(self, assigned: Sequence[Any]) -> None:
        for tp in assigned:
            name = partition_name(tp.topic, tp.partition)
            position = self._positions.get(name)
            if position is not None:
                self._consumer.seek(tp, position)
                self._next[name] = position

    def _require_open(self) -> Any:
        if self._consumer is None:
            raise RuntimeError(f"source {self.name!r} is not open")
        return self._consumer


@final
class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Forwards rebalance callbacks to the source."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._source._revoked(revoked)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._source._assigned(assigned)
