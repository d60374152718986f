"""Replaying dead letters: a source that feeds stored records back into a pipeline.

:class:`DeadLetterSource` reads a dead-letter store (JSON Lines, rotated files
included, or SQLite) and yields each matching letter's original value, key,
headers and event time, as the failed record's source handed them over. Run
the fixed pipeline with it under its own name (``riprap dlq replay`` uses
``f"{name}.replay"``).

Replays are idempotent because the position is checkpointed like any other
source's: it is the index of a stored letter in read order, counted over every
stored copy (matching or not), so a second replay under the same pipeline name
resumes after the letters already done instead of sending them again.

Each letter is replayed once, by id: a repeat (the same letter stored again
after the failing run crashed) is skipped but its position passed, and counted
as the source outcome ``repeats_folded`` (the run report and the
``riprap_source_outcomes`` metric show it). A resumed replay first reads the
letters before its position, remembering their ids, so a repeat after the
position of a letter replayed before it is skipped too. The ids are kept in a
:class:`~riprap.deadletters.LetterIds`: exact, in bounded memory. An SQLite
store holds one row per id, so nothing needs remembering there.

A filtered replay reads a partition of its own, ``dlq:<path>?<filter>``, so
the letters it passes because they do not match are not marked as replayed:
a later replay under the same name with another filter, or none, still sends
them. It skips, and counts as ``already_replayed``, the letters an earlier
replay under that name sent (under any filter: every filter's position is in
the checkpoint), and counts those it passes as ``filtered_out``.

Positions are only stable while the store keeps its oldest letters: purging
letters (which also folds repeats), or a rotation that deletes the oldest JSON
Lines file (only with ``retention="delete_oldest"``), between two runs of the
same replay shifts the indexes. So the checkpoint also keeps, with each
position, the id of the last letter read before it (:meth:`DeadLetterSource.identities`),
and a replay resumes right after that letter wherever it is now, or from the
first letter stored when it is gone (purges and rotations take the oldest
letters first, so the letters before it went too): it never skips a letter
stored since, and its positions still only grow (the offsets it hands over
are the store's indexes shifted by what was removed). A replay that resumes
so says it in the log. Letters also carry an ``idempotency_key`` for sinks
that can deduplicate on it.
"""

from __future__ import annotations

import logging
import math
import os
from itertools import islice
from typing import TYPE_CHECKING, Any, final
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread

from riprap._core.clock import SYSTEM_CLOCK, Clock
from riprap._core.errors import ConfigError
from riprap._core.records import SourceBatch
from riprap.deadletters._ids import LetterIds
from riprap.deadletters._stores import DeadLetterFilter, scan_store

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Mapping

    from riprap._core.protocols import SourceContext
    from riprap._core.records import Headers
    from riprap.deadletters._envelope import DeadLetter


log = logging.getLogger("riprap.dlq")

ALREADY_REPLAYED = "already_replayed"
"""Source outcome: letters a replay under the same pipeline name sent before."""
FILTERED_OUT = "filtered_out"
"""Source outcome: letters passed because they do not match the replay's filter."""


@final
class TokenBucket:
    """Paces work to ``rate`` items per second, with bursts of up to one second's worth.

    Args:
        rate: Items per second; positive and finite.
        clock: Where time is read and slept (virtual in tests).

    Raises:
        ConfigError: ``rate`` is not a positive finite number.
    """

    __slots__ = ("_clock", "_last", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, clock: Clock) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError("rate_limit", f"must be a positive number, got {rate!r}")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock.monotonic()

    @property
    def burst(self) -> int:
        """The most items one :meth:`acquire` may ask for."""
        return int(self.capacity)

    async def acquire(self, count: int) -> None:
        """Wait until ``count`` items (at most :attr:`burst`) may go, and take them."""
        self._refill()
        if self._tokens < count:
            await self._clock.sleep((count - self._tokens) / self.rate)
            self._refill()
        self._tokens -= count

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now


@final
class DeadLetterSource:
    """Yields the original records of stored dead letters; one partition, ``dlq:<path>``.

    The partition is named after the absolute path, so a replay resumes
    wherever it is started from, and after the filter (``?stage=parse``) when
    there is one. A batch's offsets are the letters' indexes in read order;
    letters that fail the filter, letters an earlier replay under the same
    pipeline name sent, and repeats of a letter already read, are skipped but
    counted (see the module docstring). A letter weighs its stored key and
    value for the pipeline's bound in bytes.

    Args:
        path: The dead-letter store (JSON Lines or SQLite).
        filter: Which letters to replay; all when ``None``.
        rate_limit: At most this many records per second; unlimited when ``None``.
        name: The step name of the source.
        clock: Paces the rate limit (a virtual clock in tests).
        id_header: When given, each record also carries the letter's id in a
            header of that name (a replay to a topic marks its messages so).

    Raises:
        ConfigError: ``rate_limit`` is not a positive finite number.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``id_header``.
    """

    __slots__ = (
        "_anchors",
        "_bucket",
        "_carried",
        "_context",
        "_earlier",
        "_filter",
        "_id_header",
        "_letters",
        "_next",
        "_reader",
        "_reported",
        "_seen",
        "_shift",
        "_skipped",
        "name",
        "partition",
        "path",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        filter: DeadLetterFilter | None = None,
        rate_limit: float | None = None,
        name: str = "dlq-replay",
        clock: Clock = SYSTEM_CLOCK,
        id_header: str | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.name = name
        self._id_header = id_header
        self._filter = filter or DeadLetterFilter()
        self.partition = f"dlq:{self.path}{_filter_suffix(self._filter)}"
        self._earlier: list[tuple[DeadLetterFilter, int]] = []  # by the store's indexes now
        self._skipped = {ALREADY_REPLAYED: 0, FILTERED_OUT: 0}
        self._bucket = None if rate_limit is None else TokenBucket(rate_limit, clock)
        self._reader: Generator[tuple[DeadLetter, bool], None, None] | None = None
        self._letters: Iterator[tuple[int, tuple[DeadLetter, bool]]] | None = None
        self._seen = LetterIds()
        self._context: SourceContext | None = None
        self._reported = 0
        self._next = 0
        # Per position this replay may be checkpointed at, the id of the last letter
        # (first copy) read before it; and the other replays' ones, as they were saved.
        self._anchors: dict[int, str] = {}
        self._carried: dict[str, str] = {}
        self._shift = 0  # the checkpoint's numbering minus the store's indexes now

    def identities(self, positions: Mapping[str, int]) -> Mapping[str, str]:
        """The id of the last letter read before this replay's position, and the other replays'.

        Saved with the positions: a later run finds each letter where it is
        then and resumes right after it (see the module docstring).
        """
        position = positions.get(self.partition)
        anchors = self._anchors
        if position is not None:
            for passed in [end for end in anchors if end < position]:
                del anchors[passed]  # a checkpoint never goes back
        anchor = None if position is None else anchors.get(position)
        if anchor is None:
            return self._carried
        return {**self._carried, self.partition: anchor}

    async def open(self, context: SourceContext) -> None:
        """Start reading after the checkpointed position (from the first letter if none).

        The letters before it are read first, for their ids only. The positions
        of replays of the same store under other filters say which later
        letters were replayed already. A position saved with the letter read
        last before it resumes right after that letter, wherever it is now.
        """
        start = context.positions.get(self.partition, 0)
        await self.aclose()  # reopening starts a fresh read
        store = f"dlq:{self.path}"
        saved = {
            name: context.identities[name]
            for name, position in context.positions.items()
            if (name == store or name.startswith(store + "?"))
            and position > 0
            and name in context.identities
        }
        found: dict[str, int] = {}
        if saved:
            found = await anyio.to_thread.run_sync(_find_letters, self.path, set(saved.values()))

        def now(name: str, position: int) -> int:
            """Where the replay ``name`` stopped at ``position`` is in the store now."""
            letter = saved.get(name)
            return position if letter is None else found.get(letter, 0)

        begin = now(self.partition, start)
        if begin != start:
            log.warning(
                "%s: letters were purged or rotated out of the store since the replay "
                "stopped at %d; %s",
                self.partition,
                start,
                f"it resumes after the letter it sent last, now at {begin}"
                if begin
                else "the letter it sent last is gone too: it resumes from the first letter",
            )
        self._shift = start - begin
        self._carried = dict(saved)
        self._carried.pop(self.partition, None)
        self._seen = LetterIds()
        self._reader = scan_store(self.path, self._seen)
        self._letters = enumerate(self._reader)
        self._earlier = [
            (letters, now(name, end))
            for name, letters, end in _earlier_replays(store, self.partition, context.positions)
        ]
        done, last = await anyio.to_thread.run_sync(_consume, self._letters, begin, self._filter)
        self._anchors = {} if last is None else {start: last}
        self._context = context
        self._reported = self._seen.repeats  # the earlier run counted those
        self._skipped = {ALREADY_REPLAYED: done, FILTERED_OUT: 0}
        self._next = begin

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next at most ``max_records`` matching letters' records, or ``None`` at the end.

        Raises:
            FileNotFoundError: The store does not exist.
            ValueError: A stored letter is corrupt or its payload cannot be decoded.
        """
        if self._letters is None:
            raise RuntimeError(f"source {self.name!r}: read before open")
        if self._bucket is not None:
            max_records = min(max_records, self._bucket.burst)
        limit = None if self._context is None else self._context.max_batch_bytes
        found, scanned, nbytes, anchors = await anyio.to_thread.run_sync(
            self._take, max(1, max_records), limit
        )
        self._anchors.update(anchors)
        self._report_repeats()
        self._report_skipped()
        self._next = scanned
        if not found:
            return None
        if self._bucket is not None:
            await self._bucket.acquire(len(found))
        shift = self._shift
        if shift:
            found = [(index + shift, letter) for index, letter in found]
        end = scanned + shift
        return letter_batch(
            self.partition, found, end=end, id_header=self._id_header, nbytes=nbytes
        )

    async def aclose(self) -> None:
        """Close the underlying file or database and forget the ids read."""
        reader, self._reader, self._letters = self._reader, None, None
        if reader is not None:
            await anyio.to_thread.run_sync(reader.close)
        self._seen.close()

    def _report_repeats(self) -> None:
        """Count the repeats folded since the last report as the ``repeats_folded`` outcome."""
        folded = self._seen.repeats - self._reported
        if folded and self._context is not None:
            self._reported = self._seen.repeats
            self._context.count("repeats_folded", folded)

    def _report_skipped(self) -> None:
        """Count the letters skipped since the last report, by why (see the module docstring)."""
        if self._context is None:
            return
        for outcome, count in self._skipped.items():
            if count:
                self._context.count(outcome, count)
        self._skipped = dict.fromkeys(self._skipped, 0)

    def _take(
        self, count: int, limit: int | None
    ) -> tuple[list[tuple[int, DeadLetter]], int, int, dict[int, str]]:
        """Up to ``count`` matching letters (or up to the one that brings them to ``limit``
        bytes), the position after the last one read, their bytes (positions by the store's
        indexes), and the id of the last letter read before each position a checkpoint may
        stop at, by the checkpoint's numbering (see :meth:`identities`)."""
        assert self._letters is not None
        found: list[tuple[int, DeadLetter]] = []
        nbytes = 0
        scanned, shift = self._next, self._shift
        anchors: dict[int, str] = {}
        last = self._anchors.get(scanned + shift)
        for index, (letter, first) in self._letters:
            scanned = index + 1
            if not first:
                continue
            if last is not None:
                anchors[index + shift] = last  # a record's offset: a split batch stops there
            last = letter.id
            if not self._filter.matches(letter):
                self._skipped[FILTERED_OUT] += 1
            elif any(index < end and f.matches(letter) for f, end in self._earlier):
                self._skipped[ALREADY_REPLAYED] += 1
            else:
                found.append((index, letter))
                nbytes += stored_size(letter)
                if len(found) == count or (limit is not None and nbytes >= limit):
                    break
        if last is not None:
            anchors[scanned + shift] = last
        return found, scanned, nbytes, anchors


def stored_size(letter: DeadLetter) -> int:
    """What a letter weighs for the bound in bytes: its stored key and value, and one each."""
    return len(letter.key or "") + len(letter.value or "") + 2


def letter_batch(
    partition: str,
    found: list[tuple[int, DeadLetter]],
    *,
    end: int,
    id_header: str | None = None,
    nbytes: int = 0,
) -> SourceBatch:
    """The original records of ``found`` (position, letter) pairs as one batch ending at ``end``.

    Shared with the Kafka and S3 replay sources. With ``id_header``, each
    record's headers end with ``(id_header, letter id as ASCII bytes)``;
    ``nbytes`` is what the letters weighed as read (the bound in bytes).

    Raises:
        ValueError: A stored payload cannot be decoded.
    """
    offsets = [index for index, _ in found]
    letters = [letter for _, letter in found]
    headers: list[Headers] = [letter.original_headers() for letter in letters]
    if id_header is not None:
        headers = [
            [*header, (id_header, letter.id.encode("ascii"))]
            for header, letter in zip(headers, letters, strict=True)
        ]
    values: list[Any] = [letter.original_value() for letter in letters]
    return SourceBatch(
        partition,
        values,
        start=offsets[0],
        end=end,
        offsets=offsets,
        keys=[letter.original_key() for letter in letters],
        headers=headers,
        timestamps=[letter.timestamp for letter in letters],
        nbytes=nbytes,
    )


def _consume(
    letters: Iterator[tuple[int, tuple[DeadLetter, bool]]], count: int, only: DeadLetterFilter
) -> tuple[int, str | None]:
    """Read ``count`` letters, replayed before the checkpoint: how many ``only`` matches, and
    the id of the last of them (first copies only).

    Only their ids are kept.
    """
    matched, last = 0, None
    for _, (letter, first) in islice(letters, count):
        if first:
            last = letter.id
            matched += only.matches(letter)
    return matched, last


def _find_letters(path: str, ids: set[str]) -> dict[str, int]:
    """Where each letter of ``ids`` is stored now: the position right after its first copy.

    Letters no longer stored are left out. Reads until every one is found.
    """
    found: dict[str, int] = {}
    seen = LetterIds()
    reader = scan_store(path, seen)
    try:
        for index, (letter, first) in enumerate(reader):
            if first and letter.id in ids and letter.id not in found:
                found[letter.id] = index + 1
                if len(found) == len(ids):
                    break
    finally:
        reader.close()
        seen.close()
    return found


_FILTER_FIELDS = ("stage", "error_type", "reason", "since", "until")


def _filter_suffix(letters: DeadLetterFilter) -> str:
    """What a filtered replay adds to its partition's name: ``""`` for every letter."""
    fields = [(name, getattr(letters, name)) for name in _FILTER_FIELDS]
    query = urlencode(
        [
            (name, repr(value) if isinstance(value, float) else value)
            for name, value in fields
            if value is not None
        ]
    )
    return f"?{query}" if query else ""


def _earlier_replays(
    store: str, partition: str, positions: Mapping[str, int]
) -> list[tuple[str, DeadLetterFilter, int]]:
    """The partition, filter and position of every other replay of ``store`` in ``positions``.

    ``store`` is the partition name of the unfiltered replay; names that do
    not parse as a filter of it are left out.
    """
    earlier = []
    for name, position in positions.items():
        if name == partition or not (name == store or name.startswith(store + "?")):
            continue
        letters = _parse_filter(name[len(store) + 1 :])
        if letters is not None:
            earlier.append((name, letters, position))
    return earlier


def _parse_filter(query: str) -> DeadLetterFilter | None:
    """The filter :func:`_filter_suffix` wrote as ``query``; ``None`` if it is none."""
    fields: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _FILTER_FIELDS or name in fields:
            return None
        if name in ("since", "until"):
            try:
                fields[name] = float(value)
            except ValueError:
                return None
        else:
            fields[name] = value
    return DeadLetterFilter(**fields)
