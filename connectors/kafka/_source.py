"""The Kafka source: one riprap partition per topic-partition, offsets committed on checkpoint."""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any, Literal, final

import anyio
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)

from riprap import ConfigError, SourceBatch
from riprap.connectors.json_codec import parse_json_column
from riprap.lowlevel import Assignment
from riprap.state import StateStoreError

from ._bounds import Bounds, all_partitions, check_start_at, check_stop_at, timed_offsets
from ._closing import stop_client
from ._codecs import lag_by_partition, parse_partition, partition_name
from ._gaps import OffsetGapError, describe_gap, offset_gap
from ._weight import cut, weigh

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from datetime import datetime

    from riprap import SourceContext

    from ._gaps import GapKind

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
    between polls, and a partition that reached ``max_poll_records`` of them
    and still holds some after the read is paused (its fetching stops) until
    its buffer is empty again. In bytes (each record weighs its serialized key
    and value), a batch ends once it holds the pipeline's
    ``SourceContext.max_batch_bytes`` and says what it weighs, so the
    pipeline's ``max_in_flight_bytes`` holds for Kafka records too; the source
    stops polling while twice that waits in it, and pauses a partition that
    holds a batch's worth.

    Offsets never move backwards. Auto-commit is off. :meth:`committed` (called
    by the engine after each durable checkpoint) commits those positions for
    the partitions this member owns, never below the group's offset as this
    member last knew it, and a member whose session expired (it was fenced)
    sends no commit at all. On assignment a partition starts at the later of
    the group's committed offset and the pipeline's checkpointed position (a
    checkpoint store of one member never drags the group back: when the group
    is ahead, another member did the records in between), else at
    ``auto_offset_reset``.

    Gaps are never silent. That starting offset is compared with the
    partition's earliest and latest offsets on the broker; below the earliest
    (retention deleted records not yet read) or beyond the latest (the topic
    was recreated) the run stops with :class:`OffsetGapError`, unless
    ``on_gap="skip"``: then the gap is logged, counted (``gap_records``: records
    known to be skipped; ``offset_gaps``: partitions resumed) and the partition
    resumes at its earliest offset. A fetch that falls out of range while the
    run goes on (the pipeline fell behind retention) is treated the same way.
    A topic recreated with more records than the checkpoint keeps the position
    inside its offsets: the checkpoint also keeps a fingerprint of the record
    before each position (:meth:`identities`), and a partition resumed there
    reads that record again first; another record there is the same kind of
    gap (``kind="replaced"``).

    Rebalances: a revoked partition's buffered records are dropped and never
    handed out; records of it already in flight get ``drain_timeout`` to
    finish, then a checkpoint commits its position. A refused commit (this
    member was fenced) is logged and counted (``commits_refused``), and the
    partition is released all the same. Records abandoned after the timeout
    are read again by the next owner: delivery is at-least-once.

    Bounded runs: with ``stop_at`` the source ends by itself. ``"end"`` reads
    each partition up to its end as it was when the run started (records
    written later are left for the next run); a timezone-aware datetime stops
    each partition before its first record stamped at or after that time (or
    at that end, whichever comes first). Once every partition is there,
    :meth:`read` returns ``None``: the run drains, checkpoints and ends with its
    report, as with a file. A bounded source is not a group member: it assigns
    itself every partition of its topics (as they are when it opens), so no
    rebalance moves them; with a ``group_id`` it starts from and commits to that
    group's offsets, which Kafka accepts only while no member of the group is
    running (stop the service, run the catch-up, start it again). With
    ``group_id=None`` positions live in the pipeline's checkpoint alone and no
    group is touched (what ``riprap backfill`` uses, see :meth:`backfill`).

    ``start_at`` is where a partition with no stored position starts: neither
    the pipeline's checkpoint nor the group has one. A stored position always
    wins, so a run resumed under the same pipeline name goes on where it
    stopped, and a group is never moved back. A start time asks the broker for
    each partition's first offset stamped at or after it (a partition with none
    starts at its end), then hands out nothing before the first record so
    stamped; records passed over are counted as ``records_before_start``.

    Args:
        topics: A topic or topics to subscribe to (or use ``pattern``).
        pattern: A regular expression of topic names to subscribe to.
        bootstrap_servers: ``host:port`` of one or more brokers.
        group_id: The consumer group, or ``None`` for none: every partition is
            assigned to this source and positions live in the checkpoint only.
        name: The step name of the source.
        max_poll_records: Most records one poll returns (default: the
            pipeline's default ``batch_size``, so a read takes a whole poll
            and a sink write carries as many records); also the per-partition
            buffer size at which the partition is paused.
        max_buffered: Most records buffered in the source (default twice
            ``max_poll_records``).
        poll_timeout: Seconds one poll waits for records before trying again;
            also the longest the broker holds a fetch for new records (the
            consumer's ``fetch_max_wait_ms``, unless ``consumer_options`` sets
            it): aiokafka fetches from a broker one request at a time, so a
            fetch for caught-up partitions alone held for aiokafka's default
            500 ms stalls the partitions behind it that still have records.
        commit_timeout: Seconds an offset commit, or the offset look-ups on an
            assignment, may take.
        drain_timeout: Seconds a revoked partition's records in flight get to
            finish before its position is committed and it is released.
        auto_offset_reset: Where a partition with no position starts:
            ``"earliest"`` (default: nothing is skipped) or ``"latest"``.
        on_gap: What a position outside the broker's offsets does:
            ``"fail"`` (default) stops the run naming the partition, the offset
            and the broker's range; ``"skip"`` counts it and resumes at the
            earliest offset.
        start_at: Where a partition without a stored position starts:
            ``"committed"`` (default: at ``auto_offset_reset``), ``"earliest"``,
            ``"latest"``, or a timezone-aware datetime.
        stop_at: ``None`` (default: read forever), ``"end"`` (the end of each
            partition when the run starts) or a timezone-aware datetime.
        consumer_options: Further ``AIOKafkaConsumer`` keyword arguments
            (security, session timeouts, ...).
        decode: ``"json"`` decodes each value as :func:`json_value` would,
            a whole batch at a time (cheaper than a ``json_value`` step); a
            value that is not JSON comes as its bytes with a
            :class:`~riprap.DecodeError` and is dead-lettered, a tombstone
            stays ``None``. ``None`` (default): values are bytes.

    Raises:
        ConfigError: Neither or both of ``topics`` and ``pattern``, a bound
            below 1, an unknown ``on_gap``, ``start_at``, ``stop_at`` or
            ``decode``, a datetime without a timezone, or an option this
            source controls itself.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        Positions never move backwards; ``on_gap``.
    .. versionchanged:: 0.3
        ``start_at``, ``stop_at`` (bounded runs), ``group_id=None`` and :meth:`backfill`.
    .. versionchanged:: 0.4
        ``decode``; the consumer's ``fetch_max_wait_ms`` follows ``poll_timeout``.
    """

    def __init__(
        self,
        topics: str | Sequence[str] = (),
        *,
        pattern: str | None = None,
        bootstrap_servers: str | Sequence[str],
        group_id: str | None,
        name: str = "kafka",
        max_poll_records: int = 1000,
        max_buffered: int | None = None,
        poll_timeout: float = 0.1,
        commit_timeout: float = 30.0,
        drain_timeout: float = 30.0,
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        on_gap: Literal["fail", "skip"] = "fail",
        consumer_options: Mapping[str, Any] | None = None,
        start_at: Literal["committed", "earliest", "latest"] | datetime = "committed",
        stop_at: Literal["end"] | datetime | None = None,
        decode: Literal["json"] | None = None,
    ) -> None:
        if decode not in (None, "json"):
            raise ConfigError("decode", f"expected 'json' or None, not {decode!r}")
        self.decode = decode
        self.topics = (topics,) if isinstance(topics, str) else tuple(topics)
        if bool(self.topics) == (pattern is not None):
            raise ConfigError("topics", "give either topics or a pattern, not both or neither")
        if max_poll_records < 1:
            raise ConfigError("max_poll_records", f"must be at least 1, not {max_poll_records}")
        self.max_buffered = 2 * max_poll_records if max_buffered is None else max_buffered
        if self.max_buffered < 1:
            raise ConfigError("max_buffered", f"must be at least 1, not {self.max_buffered}")
        if auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(
                "auto_offset_reset", f"must be 'earliest' or 'latest', not {auto_offset_reset!r}"
            )
        if on_gap not in ("fail", "skip"):
            raise ConfigError("on_gap", f"must be 'fail' or 'skip', not {on_gap!r}")
        self.start_at = check_start_at(start_at)
        self.stop_at = check_stop_at(stop_at)
        if start_at == "earliest":  # the same choice as auto_offset_reset, spelled as a start
            auto_offset_reset = "earliest"
        elif start_at == "latest":
            auto_offset_reset = "latest"
        self._bounds = Bounds(self.start_at, self.stop_at)
        self._manual = stop_at is not None or group_id is None
        """Partitions assigned by this source, not by a group (no rebalances)."""
        options = dict(consumer_options or {})
        clash = sorted(_FORBIDDEN_OPTIONS & options.keys())
        if clash:
            raise ConfigError("consumer_options", f"set {clash[0]!r} with its own argument")
        self.name = name
        self.pattern = pattern
        self.group_id = group_id
        self.max_poll_records = max_poll_records
        self.auto_offset_reset = auto_offset_reset
        self.on_gap = on_gap
        self._poll_ms = max(1, round(poll_timeout * 1000))
        self._commit_timeout = commit_timeout
        self._matcher = re.compile(pattern) if pattern is not None else None
        self._config: dict[str, Any] = {
            # A fetch holds every partition of its broker: one for caught-up partitions
            # alone waits out this bound while the others' next records wait behind it.
            "fetch_max_wait_ms": self._poll_ms,
            **options,
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "enable_auto_commit": False,
            "max_poll_records": max_poll_records,
            # The consumer never resets a position by itself: an offset out of range
            # is an error this source handles (a gap), never a silent jump.
            "auto_offset_reset": "none",
        }
        self._consumer: Any = None
        self._buffer: dict[Any, list[Any]] = {}
        self._buffered = 0
        self._buffer_bytes: dict[Any, int] = {}
        """Per partition: what its buffered records weigh (see ``_weight``)."""
        self._buffered_bytes = 0
        self._max_batch_bytes: int | None = None
        """The pipeline's byte limit of one batch (``SourceContext``), ``None`` for none."""
        self._paused: set[Any] = set()
        self._full: set[Any] = set()
        """Partitions whose buffer reached ``max_poll_records`` in this read."""
        self._positions: dict[str, int] = {}
        """The pipeline's checkpointed position per partition (durable in its store)."""
        self._next: dict[str, int] = {}
        self._committed: dict[Any, int] = {}
        """Per assigned partition: the group's offset as this member last knew it."""
        self._floor: dict[Any, int] = {}
        """Per assigned partition: where it started here; nothing below is ever committed."""
        self._fetch_next: dict[Any, int] = {}
        """Per positioned partition: the lowest offset a fetched record may have."""
        self._unpositioned: set[Any] = set()
        """Assigned partitions not yet positioned (paused until they are)."""
        self._unconfirmed: dict[Any, tuple[int, int, int]] = {}
        """Positions past the listed latest offset: ``(offset, earliest, latest)``, see _confirm."""
        self._marks: dict[str, dict[int, str]] = {}
        """Per partition: for each batch end handed out, the fingerprint of the record before."""
        self._resumed: dict[str, tuple[int, str]] = {}
        """Per partition: the checkpointed position and the fingerprint saved with it."""
        self._unverified: dict[Any, tuple[int, str, int, int]] = {}
        """Resumed partitions whose record before the position is still to be checked:
        ``(position, fingerprint, earliest, latest)``, see _verify."""
        self._leases: dict[Any, Assignment] = {}
        """Each assigned partition's current assignment, carried by its batches."""
        self._fresh: set[Any] = set()
        """Partitions started at ``auto_offset_reset`` that have handed out nothing yet."""
        self._failure: BaseException | None = None
        self._position_lock = anyio.Lock()
        self._assignments = 0
        """Assignments so far: a positioning that saw another one start gives way to it."""
        self._context: SourceContext | None = None
        self.drain_timeout = drain_timeout

    # -- lifecycle ---------------------------------------------------------------

    async def open(self, context: SourceContext) -> None:
        """Join the group; assigned partitions resume where the group or the checkpoint is."""
        self._context = context
        self._max_batch_bytes = context.max_batch_bytes
        self._positions = {p: v for p, v in context.positions.items() if self.owns(p)}
        self._next = dict(self._positions)
        self._resumed = {
            name: (self._positions[name], identity)
            for name, identity in context.identities.items()
            if name in self._positions
        }
        self._marks = {}
        self._unverified = {}
        consumer = AIOKafkaConsumer(**self._config)
        listener = _Listener(self)
        if self._manual:
            pass  # assigned below, once the consumer knows the topics
        elif self._matcher is not None:
            consumer.subscribe(pattern=self.pattern, listener=listener)
        else:
            consumer.subscribe(topics=list(self.topics), listener=listener)
        self._consumer = consumer
        await consumer.start()
        if self._manual:
            with anyio.fail_after(self._commit_timeout):
                tps = await all_partitions(consumer, self.topics, self._matcher)
            consumer.assign(tps)
            await self._assigned(tps)

    def backfill(self, start: datetime, stop: datetime) -> KafkaSource:
        """A copy that reads the records stamped from ``start`` up to ``stop`` and ends.

        The copy joins no group (``group_id=None``): the live group's members,
        offsets and commits are untouched, and its positions live in the
        checkpoint of the pipeline that runs it (run it under its own name).

        Raises:
            ConfigError: A datetime without a timezone.
        """
        options = {k: v for k, v in self._config.items() if k not in _FORBIDDEN_OPTIONS}
        return KafkaSource(
            self.topics,
            pattern=self.pattern,
            bootstrap_servers=self._config["bootstrap_servers"],
            group_id=None,
            name=self.name,
            max_poll_records=self.max_poll_records,
            max_buffered=self.max_buffered,
            poll_timeout=self._poll_ms / 1000,
            commit_timeout=self._commit_timeout,
            drain_timeout=self.drain_timeout,
            auto_offset_reset=self.auto_offset_reset,
            on_gap=self.on_gap,
            consumer_options=options,
            start_at=start,
            stop_at=stop,
            decode=self.decode,
        )

    def for_worker(self, index: int, count: int) -> KafkaSource:
        """This source itself: each worker joins the group, and Kafka spreads the partitions.

        A worker's own checkpoint never drags the group back (the start is the
        later of the two), so positions follow partitions whatever the count.

        Raises:
            ConfigError: The source is not a group member (no ``group_id``, or
                bounded by ``stop_at``): its partitions would be read by every worker.
        """
        if self._manual:
            raise ConfigError(
                "workers",
                f"source {self.name!r} assigns its partitions itself (no group_id, or "
                f"stop_at): {count} workers would each read them all; give it a group_id",
            )
        return self

    async def aclose(self) -> None:
        """Leave the group and stop the consumer (committing nothing)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_client(consumer.stop, f"source {self.name!r}")
        self._buffer.clear()
        self._buffered = 0
        self._buffer_bytes.clear()
        self._buffered_bytes = 0
        self._paused.clear()

    # -- reading -----------------------------------------------------------------

    async def read(self, max_records: int) -> SourceBatch | None:
        """Up to ``max_records`` records of one partition; waits until there are some.

        Returns ``None`` only when bounded (``stop_at``) and every partition
        reached its stop: a topic itself has no end. Partitions take turns.

        Raises:
            OffsetGapError: A position lies outside the broker's offsets and
                ``on_gap`` is ``"fail"``.
        """
        consumer = self._require_open()
        while True:
            if self._failure is not None:
                raise self._failure
            if self._unpositioned:
                await self._position(self._unpositioned)
            if self._room():
                timeout = 0 if self._buffered else self._poll_ms
                try:
                    fetched = await _getmany(
                        consumer,
                        timeout_ms=timeout,
                        max_records=min(self.max_poll_records, self.max_buffered - self._buffered),
                    )
                except OffsetOutOfRangeError as exc:
                    await self._out_of_range(exc)
                    continue
                except NoOffsetForPartitionError:
                    # Raised for a partition the fetcher looked at before the assignment
                    # callback positioned it; the seek has replaced it (or will).
                    continue
                if self._unconfirmed:
                    fetched = await self._confirm(fetched)
                if self._unverified:
                    fetched = await self._verify(fetched)
                if self._bounds.bounded:
                    self._bounds.confirm(consumer.highwater)
                self._add(fetched)
            else:
                await anyio.lowlevel.checkpoint()
            batch = self._take(max_records)
            self._pause_full()
            if batch is not None:
                return batch
            if self._bounds.bounded and await self._ended():
                return None

    def _room(self) -> bool:
        """Whether the buffer takes another poll: under ``max_buffered`` records and two
        batches' worth of bytes."""
        limit = self._max_batch_bytes
        return self._buffered < self.max_buffered and (
            limit is None or self._buffered_bytes < 2 * limit
        )

    def _pause_full(self) -> None:
        """Pause the partitions that filled their buffer and still hold records after this read.

        A read that takes what a poll brought pauses nothing: a pause and a
        resume would only hold the partition's next fetch back.
        """
        for tp in self._full:
            if self._buffer.get(tp) and tp not in self._paused:
                self._consumer.pause(tp)
                self._paused.add(tp)
        self._full.clear()

    async def _ended(self) -> bool:
        """Whether every partition of a bounded source reached its stop (pausing those that did)."""
        consumer = self._consumer
        if self._unpositioned or self._buffered:
            return False
        ended = True
        for tp in consumer.assignment():
            position = max(self._fetch_next.get(tp, 0), await consumer.position(tp))
            if self._bounds.reached(tp, position):
                consumer.pause(tp)  # nothing more is handed out: stop fetching it
            else:
                ended = False
        return ended

    def _add(self, fetched: Mapping[Any, list[Any]]) -> None:
        assigned = self._consumer.assignment()
        for tp, records in fetched.items():
            if not records or tp not in assigned:
                continue  # revoked while the poll was in flight: the new owner reads them
            floor = self._fetch_next.get(tp)
            if floor is None:
                continue  # not positioned by this source yet: its seek reads them again
            if records[0].offset < floor:
                # Fetched before a seek moved the partition on: never hand out a
                # record twice, never go backwards.
                records = [r for r in records if r.offset >= floor]
                if not records:
                    continue
            self._fetch_next[tp] = records[-1].offset + 1
            if self._bounds.active:
                records = self._admit(tp, records)
                if not records:
                    continue
            self._fresh.discard(tp)
            buffer = self._buffer.setdefault(tp, [])
            buffer.extend(records)
            self._buffered += len(records)
            nbytes = weigh(records)
            held = self._buffer_bytes[tp] = self._buffer_bytes.get(tp, 0) + nbytes
            self._buffered_bytes += nbytes
            limit = self._max_batch_bytes
            if len(buffer) >= self.max_poll_records or (limit is not None and held >= limit):
                self._full.add(tp)  # paused after the read if it still holds records

    def _admit(self, tp: Any, records: list[Any]) -> list[Any]:
        """The records within ``start_at``..``stop_at``; those before the start are counted."""
        admitted, skipped = self._bounds.admit(tp, records)
        self._count("records_before_start", skipped)
        return admitted

    def _take(self, max_records: int) -> SourceBatch | None:
        tp = next((tp for tp, buffer in self._buffer.items() if buffer), None)
        if tp is None:
            return None
        buffer = self._buffer[tp]
        held = self._buffer_bytes.pop(tp)
        count = min(max_records, len(buffer))
        limit = self._max_batch_bytes
        if count == len(buffer) and (limit is None or held <= limit):
            nbytes = held  # the whole buffer: weighed when it came
        elif limit is None:
            nbytes = weigh(buffer[:count])
        else:
            count, nbytes = cut(buffer[:count], limit)
        records, rest = buffer[:count], buffer[count:]
        # Re-insert at the end so that partitions take turns.
        del self._buffer[tp]
        self._buffered_bytes -= nbytes
        if rest:
            self._buffer[tp] = rest
            self._buffer_bytes[tp] = held - nbytes
        elif tp in self._paused:
            self._paused.discard(tp)
            self._consumer.resume(tp)
        self._buffered -= len(records)
        name = partition_name(tp.topic, tp.partition)
        end = self._next[name] = records[-1].offset + 1
        marks = self._marks.setdefault(name, {})
        marks[end] = fingerprint(records[-1])
        if len(marks) > _MARKS:
            del marks[next(iter(marks))]
        values = [r.value for r in records]
        errors = None
        if self.decode is not None:
            where = {"source": tp.topic, "partition": name}
            values, errors = parse_json_column(values, lambda _: where)
        return SourceBatch(
            name,
            values,
            start=records[0].offset,
            end=records[-1].offset + 1,
            offsets=[r.offset for r in records],
            keys=[r.key for r in records],
            headers=[r.headers for r in records],
            timestamps=[None if r.timestamp is None else r.timestamp / 1000 for r in records],
            errors=errors or None,
            assignment=self._leases.get(tp),
            nbytes=nbytes,
        )

    # -- offsets -----------------------------------------------------------------

    async def committed(self, positions: Mapping[str, int]) -> None:
        """Commit checkpointed ``positions`` as the group's offsets, for owned partitions only.

        The positions are durable in the pipeline's checkpoint store when this
        is called. A failed or refused commit is logged (and counted when
        refused) and left to the next checkpoint.
        """
        for partition, position in positions.items():
            if self.owns(partition):
                self._positions[partition] = position
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

        Only partitions this member is assigned (and has positioned) are
        committed, and only forwards: an offset at or below the group's offset
        as this member knows it, or below where the partition started here, is
        left out. A member whose session expired sends nothing.

        Raises:
            aiokafka.errors.CommitFailedError: This member was fenced (its session
                expired, or the group rebalanced): the commit was dropped.
            aiokafka.errors.KafkaError: The group refused the commit otherwise.
            TimeoutError: The commit took longer than ``commit_timeout``.
        """
        consumer = self._consumer
        if consumer is None or self.group_id is None:
            return
        offsets: dict[Any, int] = {}
        for tp in consumer.assignment():
            offset = positions.get(partition_name(tp.topic, tp.partition))
            if (
                offset is None
                or tp in self._unpositioned
                or tp in self._unconfirmed
                or tp in self._unverified
            ):
                continue
            known = self._committed.get(tp)
            if offset < self._floor.get(tp, 0) or (known is not None and offset <= known):
                continue
            offsets[tp] = offset
        if not offsets:
            return
        if not self._manual and _fenced(consumer):  # a manual assignment has no generation
            self._count("commits_refused", 1)
            raise CommitFailedError(
                f"group {self.group_id!r}: this member's session expired (it was fenced); "
                "its commit is dropped and the group's offsets stay where they are"
            )
        try:
            with anyio.fail_after(self._commit_timeout):
                await consumer.commit(offsets)
        except CommitFailedError:
            self._count("commits_refused", 1)
            raise
        for tp, offset in offsets.items():
            if tp in self._floor:  # not revoked while the commit was in flight
                self._committed[tp] = offset

    def identities(self, positions: Mapping[str, int] | None = None) -> Mapping[str, str]:
        """Per partition, a fingerprint of the record before its position (timestamp and digest).

        Saved with the positions: a later run that resumes there reads that
        record again first, and a different one means the topic was recreated
        and refilled past the checkpoint (:class:`OffsetGapError`, ``kind``
        ``"replaced"``), which offsets alone cannot tell.
        """
        if positions is None:
            return {}
        found: dict[str, str] = {}
        for name, position in positions.items():
            marks = self._marks.get(name)
            identity = None
            if marks:
                identity = marks.get(position)
                while marks and next(iter(marks)) < position:  # passed by a checkpoint
                    del marks[next(iter(marks))]
            if identity is None:
                resumed = self._resumed.get(name)
                if resumed is not None and resumed[0] == position:
                    identity = resumed[1]
            if identity is not None:
                found[name] = identity
        return found

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

    def _count(self, outcome: str, n: int) -> None:
        if self._context is not None and n:
            self._context.count(outcome, n)

    # -- rebalances --------------------------------------------------------------

    async def _revoked(self, revoked: Sequence[Any]) -> None:
        """Give partitions up: hand out nothing more, drain and commit, then forget them.

        Records of the partitions still waiting in the buffer are dropped (the
        next owner reads them); records already in the pipeline get up to
        ``drain_timeout`` to finish, then their positions are checkpointed and
        committed before the partitions are released. Whatever the checkpoint
        does (a fenced member's commit is refused), the partitions are
        forgotten: when they come back, they start from the group's offset.
        """
        names = [partition_name(tp.topic, tp.partition) for tp in revoked]
        try:
            for tp in revoked:
                dropped = self._buffer.pop(tp, [])
                self._buffered -= len(dropped)
                self._buffered_bytes -= self._buffer_bytes.pop(tp, 0)
                self._paused.discard(tp)
            if self._context is not None and names:
                try:
                    await self._context.drain(names, self.drain_timeout)
                except Exception as exc:  # logged; the release must go on
                    self._count("revoke_saves_failed", 1)
                    log.warning(
                        "source %s: the checkpoint on revoking %s failed (%s: %s); the "
                        "partitions are released and their next owner starts from the "
                        "group's committed offsets",
                        self.name,
                        ", ".join(names),
                        type(exc).__name__,
                        exc,
                    )
        finally:
            for tp, name in zip(revoked, names, strict=True):
                self._forget(tp, name)

    def _forget(self, tp: Any, name: str) -> None:
        lease = self._leases.pop(tp, None)
        if lease is not None:  # records of it still in flight are the next owner's
            lease.revoked = True
        for per_tp in (
            self._committed,
            self._floor,
            self._fetch_next,
            self._unconfirmed,
            self._unverified,
        ):
            per_tp.pop(tp, None)
        self._marks.pop(name, None)
        self._unpositioned.discard(tp)
        self._fresh.discard(tp)
        self._bounds.forget(tp)
        self._next.pop(name, None)
        self._positions.pop(name, None)  # the next owner's commits are the truth now

    async def _assigned(self, assigned: Iterable[Any]) -> None:
        """Position new partitions: paused at once, resumed once their start is known."""
        if self._consumer is None:
            return  # closed while the group was assigning: nothing to read them with
        self._assignments += 1
        for tp in assigned:
            self._leases[tp] = Assignment()
            self._consumer.pause(tp)
            self._unpositioned.add(tp)
        try:
            await self._position(self._unpositioned)
        except (OffsetGapError, StateStoreError) as exc:
            self._failure = exc  # read() raises it: the run stops naming the gap or the state
        except Exception as exc:  # read() positions them again, or fails
            log.warning(
                "source %s: positioning newly assigned partitions failed (%s: %s); "
                "they stay paused and are positioned on the next read",
                self.name,
                type(exc).__name__,
                exc,
            )

    async def _position(self, pending: set[Any]) -> None:
        """Seek each partition of ``pending`` to where it starts, then resume it.

        The start is the later of the group's committed offset and the
        pipeline's checkpointed position (else ``auto_offset_reset``), checked
        against the partition's earliest and latest offsets.
        """
        async with self._position_lock:
            consumer = self._consumer
            assignments = self._assignments
            tps = [tp for tp in pending if tp in consumer.assignment()]
            pending.difference_update(set(pending) - set(tps))
            if not tps:
                return
            with anyio.fail_after(self._commit_timeout):
                group = await self._group_offsets(tps)
                earliest = await consumer.beginning_offsets(tps)
                latest = await consumer.end_offsets(tps)
                timed = await timed_offsets(consumer, tps, self._bounds.start_ms, earliest)
            if assignments != self._assignments:
                return  # a rebalance meanwhile: its own positioning looks the offsets up again
            floors = await self._restore_state(tps, group)
            if assignments != self._assignments or self._consumer is None:
                return  # another rebalance, or closed meanwhile
            for tp in tps:
                if tp not in pending or tp not in consumer.assignment():
                    continue  # revoked meanwhile
                at_time = None if timed is None else timed.get(tp, latest[tp])
                floor = floors.get(partition_name(tp.topic, tp.partition))
                await self._start(tp, group.get(tp), earliest[tp], latest[tp], at_time, floor)
                pending.discard(tp)
                if tp not in self._paused:
                    consumer.resume(tp)

    async def _restore_state(self, tps: Sequence[Any], group: Mapping[Any, int]) -> dict[str, int]:
        """Have the pipeline restore state kept for ``tps`` (a changelog); each one's floor.

        Raises:
            StateStoreError: The state kept for a partition is behind where it resumes.
        """
        if self._context is None:
            return {}
        starts: dict[str, int | None] = {}
        for tp in tps:
            name = partition_name(tp.topic, tp.partition)
            known = [o for o in (group.get(tp), self._positions.get(name)) if o is not None]
            starts[name] = max(known) if known else None
        return dict(await self._context.assigned(starts))

    async def _group_offsets(self, tps: Sequence[Any]) -> dict[Any, int]:
        """The group's committed offset of each partition that has one."""
        offsets: dict[Any, int] = {}
        if self.group_id is None:
            return offsets

        async def one(tp: Any) -> None:
            offset = await self._consumer.committed(tp)
            if offset is not None:
                offsets[tp] = offset

        async with anyio.create_task_group() as tg:
            for tp in tps:
                tg.start_soon(one, tp)
        return offsets

    async def _start(
        self,
        tp: Any,
        group: int | None,
        earliest: int,
        latest: int,
        timed: int | None = None,
        floor: int | None = None,
    ) -> None:
        """Seek ``tp`` to its start; ``timed``: where ``start_at``'s time puts it, if given.

        ``floor``: a position the pipeline's state says every record below is done.
        """
        consumer = self._consumer
        name = partition_name(tp.topic, tp.partition)
        local = self._positions.get(name)
        known = [offset for offset in (group, local, floor) if offset is not None]
        self._bounds.positioned(tp, latest, at_start_time=not known and timed is not None)
        if group is not None:
            self._committed[tp] = group
        if not known:
            if timed is not None:
                start = timed
            else:
                start = earliest if self.auto_offset_reset == "earliest" else latest
            self._fresh.add(tp)
        else:
            start = max(known)
            if local is not None and group is not None and group > local:
                log.info(
                    "source %s: %s starts at the group's offset %d, ahead of this "
                    "pipeline's checkpoint %d (another member did the records between)",
                    self.name,
                    name,
                    group,
                    local,
                )
            kind = offset_gap(start, earliest, latest)
            if kind is None and self._to_verify(tp, name, start, earliest, latest):
                self._floor[tp] = start
                self._fetch_next[tp] = start - 1
                self._next[name] = start
                consumer.seek(tp, start - 1)
                return
            if kind == "retention":
                start = await self._gap(tp, start, earliest, max(latest, earliest), kind)
            elif kind == "beyond":
                # Some brokers list a partition's latest offset as the start of its last
                # record batch. Read from there; the fetch's high watermark confirms.
                self._unconfirmed[tp] = (start, earliest, latest)
                self._floor[tp] = start
                self._fetch_next[tp] = start
                self._next[name] = start
                consumer.seek(tp, latest)
                return
        self._floor[tp] = start
        self._fetch_next[tp] = start
        self._next[name] = start
        consumer.seek(tp, start)

    async def _confirm(self, fetched: Mapping[Any, list[Any]]) -> Mapping[Any, list[Any]]:
        """Check positions past the listed latest offset against the fetch's high watermark.

        Returns ``fetched`` without the records of partitions that were just
        moved to their earliest offset (a skipped gap): they are read again.
        """
        moved: set[Any] = set()
        for tp, (offset, earliest, latest) in list(self._unconfirmed.items()):
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue  # no fetch response yet
            if offset > highwater:
                await self._gap(tp, offset, earliest, max(latest, highwater), "beyond")
                moved.add(tp)
            else:  # the listed latest offset was behind (the start of the last batch)
                name = partition_name(tp.topic, tp.partition)
                self._to_verify(tp, name, offset, earliest, max(latest, highwater))
            self._unconfirmed.pop(tp, None)
        if not moved:
            return fetched
        return {tp: records for tp, records in fetched.items() if tp not in moved}

    def _to_verify(self, tp: Any, name: str, start: int, earliest: int, latest: int) -> bool:
        """Whether ``tp`` resumes at its checkpointed position with a fingerprint of the record
        before it; if so, that record is checked when it is fetched (see :meth:`_verify`)."""
        resumed = self._resumed.get(name)
        if resumed is None or start != resumed[0] or start != self._positions.get(name):
            return False  # no fingerprint, or another start (the group's offset is ahead)
        if start <= earliest:
            return False  # nothing before it left to compare
        self._unverified[tp] = (start, resumed[1], earliest, latest)
        return True

    async def _verify(self, fetched: Mapping[Any, list[Any]]) -> Mapping[Any, list[Any]]:
        """Check the record before each resumed position against the fingerprint saved with it.

        Returns ``fetched`` without that record, and without the records of a
        partition moved to its earliest offset (a skipped gap). A record gone
        since (compacted away) cannot be checked, and the partition goes on.
        """
        checked = dict(fetched)
        for tp, (position, identity, earliest, latest) in list(self._unverified.items()):
            records = checked.get(tp)
            before = next((r for r in records or () if r.offset >= position - 1), None)
            if before is None:
                continue  # not fetched yet
            del self._unverified[tp]
            if before.offset == position - 1 and fingerprint(before) != identity:
                await self._gap(tp, position, earliest, latest, "replaced")
                del checked[tp]
                continue
            self._fetch_next[tp] = position  # _add leaves out the record before
        return checked

    async def _out_of_range(self, exc: OffsetOutOfRangeError) -> None:
        """A fetch fell outside the broker's offsets while running: a gap, or a retry."""
        consumer = self._consumer
        offsets: dict[Any, int] = dict(exc.args[0]) if exc.args else {}
        tps = [tp for tp in offsets if tp in consumer.assignment()]
        if not tps:
            return
        with anyio.fail_after(self._commit_timeout):
            earliest = await consumer.beginning_offsets(tps)
            latest = await consumer.end_offsets(tps)
        for tp in tps:
            offset = offsets[tp]
            highest = max(latest[tp], consumer.highwater(tp) or 0)
            kind = offset_gap(offset, earliest[tp], highest)
            if kind is None:
                consumer.seek(tp, offset)  # in range again (a leader moved): fetch again
            elif tp in self._fresh:
                # Started at auto_offset_reset and nothing read yet: no checkpointed
                # offset to keep, so nothing is skipped by starting over.
                start = earliest[tp] if self.auto_offset_reset == "earliest" else latest[tp]
                self._floor[tp] = self._fetch_next[tp] = start
                consumer.seek(tp, start)
            else:
                await self._gap(tp, offset, earliest[tp], highest, kind)

    async def _gap(self, tp: Any, offset: int, earliest: int, latest: int, kind: GapKind) -> int:
        """Fail on a gap, or (``on_gap="skip"``) count it, log it and resume at ``earliest``."""
        if self.on_gap == "fail":
            raise OffsetGapError(
                tp.topic, tp.partition, offset=offset, earliest=earliest, latest=latest, kind=kind
            )
        name = partition_name(tp.topic, tp.partition)
        skipped = earliest - offset if kind == "retention" else 0
        log.warning(
            "source %s: %s; on_gap='skip': resuming at offset %d (%d records skipped)",
            self.name,
            describe_gap(tp.topic, tp.partition, offset, earliest, latest, kind).partition(
                "; set on_gap"
            )[0],
            earliest,
            skipped,
        )
        self._count("offset_gaps", 1)
        self._count("gap_records", skipped)
        if kind in ("beyond", "replaced") and self._context is not None:
            # Offsets start again below what the engine tracks for this partition:
            # let it forget the partition (after its records in flight) first, and
            # commit nothing of it meanwhile (those offsets belong to the old topic).
            self._unconfirmed[tp] = (offset, earliest, latest)
            try:
                await self._context.drain([name], self.drain_timeout)
            finally:
                self._unconfirmed.pop(tp, None)
        if kind in ("beyond", "replaced"):
            self._committed.pop(tp, None)  # the group's offset belongs to the old topic
        self._marks.pop(name, None)
        self._resumed.pop(name, None)  # its fingerprint is the old topic's
        self._positions.pop(name, None)
        self._floor[tp] = self._fetch_next[tp] = self._next[name] = earliest
        self._consumer.seek(tp, earliest)
        return earliest

    def _require_open(self) -> Any:
        if self._consumer is None:
            raise RuntimeError(f"source {self.name!r} is not open")
        return self._consumer


_MARKS = 4_096
"""Batch ends a partition keeps fingerprints for until a checkpoint passes them (the oldest go)."""


def fingerprint(record: Any) -> str:
    """A record's timestamp and a 64-bit digest of its key and value (``"<ms>:<16 hex>"``)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (record.key, record.value):
        if part is None:
            digest.update(b"\xff" * 8)
        else:
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return f"{record.timestamp}:{digest.hexdigest()}"


async def _getmany(consumer: Any, *, timeout_ms: int, max_records: int) -> Mapping[Any, Any]:
    """``consumer.getmany`` over the partitions that are not paused.

    A getmany over a paused partition makes aiokafka drop the records it has
    already fetched for it, to fetch them again after the resume (a wasted
    round trip of up to ``max_partition_fetch_bytes``); asked only for the
    others, it keeps them until the partition resumes.
    """
    paused = consumer.paused()
    if not paused:
        return await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)  # type: ignore[no-any-return]
    wanted = consumer.assignment() - paused
    if not wanted:
        await anyio.sleep(timeout_ms / 1000)
        return {}
    return await consumer.getmany(*wanted, timeout_ms=timeout_ms, max_records=max_records)  # type: ignore[no-any-return]


def _fenced(consumer: Any) -> bool:
    """Whether the consumer's group membership was reset (its session expired).

    aiokafka resets the generation to -1 when a heartbeat learns that the
    member is unknown or its generation stale; until it has rejoined, a commit
    would be sent without a generation, which some brokers accept from a
    member that no longer owns the partition.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    return isinstance(generation, int) and generation < 0


@final
class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Forwards rebalance callbacks to the source."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._source._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._source._assigned(assigned)
