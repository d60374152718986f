"""Where a Kafka source starts (``start_at``) and where a bounded one stops (``stop_at``).

The broker is asked first (ListOffsets by timestamp for a start time, the end
offsets for a stop) and the records themselves have the last word: a partition
started at a time hands out nothing before its first record stamped at or
after that time, and a partition stopped at a time ends before its first
record stamped at or after it. That keeps the window exact on brokers whose
timestamp look-up is approximate or missing (they answer too early an offset).

A stop offset is the partition's end when it is positioned: the later of the
listed end offset and the high watermark of its first fetch (some brokers list
the start of the last record batch as the end, which would leave records out).
A bounded source assigns itself its partitions (:func:`all_partitions`): no
group rebalance can move them while it reads to its stops.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, final

from aiokafka import TopicPartition
from aiokafka.errors import UnsupportedVersionError

from riprap import ConfigError

if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Mapping, Sequence

StartAt = Literal["committed", "earliest", "latest"] | datetime
"""Where a partition without a stored position starts."""

StopAt = Literal["end"] | datetime | None
"""Where a bounded source stops reading each partition (``None``: never)."""


def check_start_at(start_at: object) -> StartAt:
    """``start_at`` if valid.

    Raises:
        ConfigError: Not one of the names, or a datetime without a timezone.
    """
    if isinstance(start_at, datetime):
        return _aware("start_at", start_at)
    if start_at in ("committed", "earliest", "latest"):
        return start_at
    raise ConfigError(
        "start_at",
        f"must be 'committed', 'earliest', 'latest' or a timezone-aware datetime, not {start_at!r}",
    )


def check_stop_at(stop_at: object) -> StopAt:
    """``stop_at`` if valid.

    Raises:
        ConfigError: Not ``None``, ``"end"`` or a timezone-aware datetime.
    """
    if isinstance(stop_at, datetime):
        return _aware("stop_at", stop_at)
    if stop_at is None or stop_at == "end":
        return stop_at
    raise ConfigError(
        "stop_at", f"must be None, 'end' or a timezone-aware datetime, not {stop_at!r}"
    )


def _aware(option: str, when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ConfigError(
            option,
            f"{when.isoformat()} has no timezone; give one (for example "
            "datetime(..., tzinfo=timezone.utc)) so the window does not depend on the host",
        )
    return when


def epoch_ms(when: datetime) -> int:
    """Milliseconds since the epoch, the unit of Kafka timestamps."""
    return int(when.timestamp() * 1000)


@final
class Bounds:
    """Per partition: the start-time filter and the stop point of one source.

    Partitions are aiokafka ``TopicPartition`` objects; records are consumer
    records (``offset``, ``timestamp`` in milliseconds or ``None``).
    """

    def __init__(self, start_at: StartAt, stop_at: StopAt) -> None:
        self.start_ms = epoch_ms(start_at) if isinstance(start_at, datetime) else None
        self.stop_ms = epoch_ms(stop_at) if isinstance(stop_at, datetime) else None
        self.bounded = stop_at is not None
        self.active = self.bounded or self.start_ms is not None
        """Whether records are checked at all (not for an unbounded source without a start time)."""
        self._before_start: set[Any] = set()
        """Partitions started at ``start_at``'s time that have admitted no record yet."""
        self._listed: dict[Any, int] = {}
        """Listed end offsets not yet checked against a fetch's high watermark."""
        self._stops: dict[Any, int] = {}
        """Confirmed stop offsets: nothing at or past one is handed out."""
        self._finished: set[Any] = set()

    def positioned(self, tp: Any, latest: int, *, at_start_time: bool) -> None:
        """``tp`` was positioned (``at_start_time``: from ``start_at``'s time look-up)."""
        self.forget(tp)
        if at_start_time and self.start_ms is not None:
            self._before_start.add(tp)
        if self.bounded:
            self._listed[tp] = latest

    def forget(self, tp: Any) -> None:
        """Drop what is known of ``tp`` (revoked, or positioned again)."""
        self._before_start.discard(tp)
        self._listed.pop(tp, None)
        self._stops.pop(tp, None)
        self._finished.discard(tp)

    def confirm(self, highwater: Callable[[Any], int | None]) -> None:
        """Fix stop offsets of partitions whose first fetch answered (``highwater(tp)``)."""
        for tp, listed in list(self._listed.items()):
            mark = highwater(tp)
            if mark is not None:
                self._stops[tp] = max(listed, mark)
                del self._listed[tp]

    def admit(self, tp: Any, records: list[Any]) -> tuple[list[Any], int]:
        """The records of ``tp`` to hand out, and how many came before the start time."""
        if tp in self._finished:
            return [], 0
        skipped = 0
        if tp in self._before_start:
            skipped = _first(records, lambda r: not _stamped_before(r, self.start_ms))
            if skipped == len(records):
                return [], skipped
            self._before_start.discard(tp)
            records = records[skipped:]
        if not self.bounded:
            return records, skipped
        stop = self._stops.get(tp)
        cut = _first(
            records,
            lambda r: (
                (stop is not None and r.offset >= stop)
                or (self.stop_ms is not None and not _stamped_before(r, self.stop_ms, default=True))
            ),
        )
        if cut < len(records):
            self._finished.add(tp)
            records = records[:cut]
        return records, skipped

    def reached(self, tp: Any, position: int) -> bool:
        """Whether ``tp``, next to be read at ``position``, has nothing more to hand out."""
        stop = self._stops.get(tp)
        if stop is not None and position >= stop:
            self._finished.add(tp)
        return tp in self._finished


async def all_partitions(
    consumer: Any, topics: Sequence[str], matcher: re.Pattern[str] | None
) -> list[TopicPartition]:
    """Every partition of ``topics`` (or of the topics ``matcher`` matches), as they are now.

    Raises:
        ConfigError: A topic named in ``topics`` does not exist.
    """
    existing = await consumer.topics()
    if matcher is not None:
        topics = sorted(t for t in existing if matcher.fullmatch(t) is not None)
    tps: list[TopicPartition] = []
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic) if topic in existing else None
        if not partitions:
            raise ConfigError("topics", f"topic {topic!r} does not exist")
        tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
    return tps


async def timed_offsets(
    consumer: Any, tps: Sequence[Any], start_ms: int | None, earliest: Mapping[Any, int]
) -> dict[Any, int] | None:
    """Per partition, the broker's first offset stamped at or after ``start_ms``.

    ``None`` without a start time. A partition with no such record is left
    out (it starts at its end). A broker that cannot look offsets up by time
    gets the earliest offsets: the records' own stamps then decide.
    """
    if start_ms is None:
        return None
    try:
        found = await consumer.offsets_for_times(dict.fromkeys(tps, start_ms))
    except UnsupportedVersionError:
        return {tp: earliest[tp] for tp in tps}
    return {tp: hit.offset for tp, hit in found.items() if hit is not None}


def _stamped_before(record: Any, ms: int | None, *, default: bool = False) -> bool:
    """Whether ``record`` is stamped before ``ms``; ``default`` for one without a timestamp.

    A record without a timestamp belongs to no time: it is never before a
    start (``default=False``) and never a stop (``default=True``).
    """
    stamp = record.timestamp
    if ms is None or stamp is None or stamp < 0:
        return default
    return bool(stamp < ms)


def _first(records: Sequence[Any], test: Any) -> int:
    """Index of the first record passing ``test`` (``len(records)`` if none does)."""
    return next((i for i, record in enumerate(records) if test(record)), len(records))
