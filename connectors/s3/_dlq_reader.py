"""Dead letters stored by :class:`S3DeadLetters`, read back: a scan, a replay source, a purge.

Positions (replay)
    One partition per object, ``dlq:s3://<bucket>/<key>``; the position is the
    index of the next line. Not one index across the prefix: keys are hashes,
    so a new object sorts anywhere among the old ones and would shift such an
    index, while the lines of an object never move (its name is the hash of
    its letters' ids in order, so a rewrite after a crash holds the same
    letters in the same order). The batch that ends an object ends at
    :data:`~riprap.connectors.s3.OBJECT_COMPLETE`, so a resumed replay skips
    finished objects without downloading them; a purge deletes whole objects,
    so it shifts no position either.

Repeats
    A letter stored in two objects (the failing pipeline was restarted after a
    crash and grouped it differently) is read once: readers keep its first
    copy in key order, as :meth:`S3DeadLetters.read` does, and count the
    others as repeats folded. The ids read are kept in a
    :class:`~riprap.deadletters.LetterIds` (exact, bounded memory). A resumed
    replay first downloads the objects an earlier run started or finished and
    reads the ids before their positions, so a letter replayed before the stop
    is not replayed again from another copy; when every object is finished it
    downloads nothing.

Purge
    Objects hold several letters and are deleted whole: an object goes only if
    every letter in it failed last before the cutoff, and an object holding
    any newer letter stays with all its letters. The delete is conditional on
    the ETag read (``If-Match``), so an object a writer replaced meanwhile is
    kept (a store that ignores the condition deletes it regardless). Letters
    are counted by id: a letter is removed when no copy of it is left, and the
    other copies in deleted objects count as repeats folded. To count them the
    purge keeps the ids of the letters in the objects it deletes (about 100
    bytes each) until it is done.

S3 errors are raised as ``OSError`` naming the location; a bucket that does
not exist, or a prefix with no objects, as ``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import errno
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import anyio.lowlevel

from riprap import SourceBatch, SystemClock
from riprap.checkpoints import CheckpointError
from riprap.deadletters import DeadLetter, DeadLetterFilter, LetterIds, TokenBucket, letter_batch

from ._client import (
    S3ClientConfig,
    call,
    check_bucket,
    client_error_types,
    error_code,
    is_missing,
    is_precondition_failure,
    list_keys,
    open_client,
)
from ._reads import download
from ._source import OBJECT_COMPLETE

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Iterator

    from riprap import Clock, SourceContext

_MISSING_BUCKET = "NoSuchBucket"


@final
@dataclass(frozen=True, slots=True)
class S3PurgeReport:
    """What :func:`purge_s3_dead_letters` did.

    Attributes:
        removed_letters: Letters deleted: their ids have no copy left.
        removed_objects: Objects deleted (every letter in them was old enough).
        kept_letters: Old letters kept because their object holds a newer one.
        kept_objects: Objects kept for that reason.
        changed_objects: Objects replaced by a writer while the purge ran; kept.
        repeats_folded: Copies in the deleted objects of letters counted
            already, or still stored in another object.

    .. versionadded:: 0.1
    """

    removed_letters: int
    removed_objects: int
    kept_letters: int
    kept_objects: int
    changed_objects: int
    repeats_folded: int = 0


@final
class _ObjectLetters:
    """The letters of one downloaded object, read in line order, one copy per id."""

    __slots__ = ("cursor", "handed", "key", "lines", "partition", "pending", "where")

    def __init__(self, where: str, key: str, partition: str, data: bytes) -> None:
        self.where = where
        self.key = key
        self.partition = partition
        self.lines = data.splitlines()
        self.cursor = 0  # the next line to parse
        self.handed = 0  # the end of the last batch handed out
        self.pending: tuple[int, DeadLetter] | None = None  # a match read ahead

    def letter(self, index: int) -> DeadLetter | None:
        """The letter on line ``index`` (``None`` for a blank line)."""
        line = self.lines[index]
        if not line.strip():
            return None
        try:
            return DeadLetter.from_json(line)
        except ValueError as exc:
            raise ValueError(f"{self.where}:{index + 1}: {exc}") from None

    def skip_to(self, position: int, seen: LetterIds) -> None:
        """Pass the lines before ``position`` (done by an earlier run), remembering their ids."""
        if position > len(self.lines):
            raise CheckpointError(
                f"{self.partition}: the checkpoint resumes at line {position}, but the object"
                f" has only {len(self.lines)} lines; was it replaced?"
            )
        for index in range(position):
            letter = self.letter(index)
            if letter is not None:
                seen.add(letter.id)
        self.cursor = self.handed = position

    def next_letter(
        self, seen: LetterIds, selector: DeadLetterFilter
    ) -> tuple[int, DeadLetter] | None:
        """The next letter not seen before that ``selector`` matches, with its line index.

        A repeat (an id in ``seen``) is passed and counted there, whatever the filter.
        """
        while self.cursor < len(self.lines):
            index = self.cursor
            self.cursor += 1
            letter = self.letter(index)
            if letter is None or not seen.add(letter.id):
                continue
            if selector.matches(letter):
                return index, letter
        return None


@contextlib.contextmanager
def _store_errors(where: str) -> Iterator[None]:
    """Raise S3's own errors as ``OSError`` (``FileNotFoundError`` for a missing bucket)."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, client_error_types()):
            raise
        if error_code(exc) == _MISSING_BUCKET:
            raise FileNotFoundError(errno.ENOENT, "no such bucket", where) from exc
        raise OSError(f"{where}: {type(exc).__name__}: {exc}") from exc


async def _letter_keys(config: S3ClientConfig, client: Any, bucket: str, prefix: str) -> list[str]:
    """The object keys under ``prefix`` in key order; ``FileNotFoundError`` if there are none."""
    keys = await list_keys(config, client, bucket, prefix)
    keys = sorted(key for key in keys if not key.endswith("/"))
    if not keys:
        raise FileNotFoundError(
            errno.ENOENT, "no dead letters stored here", f"s3://{bucket}/{prefix}"
        )
    return keys


async def _download(
    config: S3ClientConfig, client: Any, bucket: str, key: str
) -> tuple[bytes, str]:
    """An object's bytes (verified, see :mod:`._reads`) and ETag."""
    data, response = await download(config, client, bucket, key)
    return data, str(response.get("ETag", ""))


async def _open_listed(
    stack: contextlib.AsyncExitStack,
    config: S3ClientConfig,
    endpoint_url: str | None,
    bucket: str,
    prefix: str,
) -> tuple[Any, list[str]]:
    """A client that ``stack`` keeps open, and the keys of the objects under ``prefix``."""
    with _store_errors(f"s3://{bucket}/{prefix}"):
        client = await open_client(stack, config, endpoint_url)
        return client, await _letter_keys(config, client, bucket, prefix)


async def _read_object(
    config: S3ClientConfig, client: Any, bucket: str, prefix: str, key: str
) -> tuple[_ObjectLetters, str]:
    """The letters of object ``key`` (its own partition) and its ETag."""
    with _store_errors(f"s3://{bucket}/{prefix}"):
        data, etag = await _download(config, client, bucket, key)
    return _ObjectLetters(f"s3://{bucket}/{key}", key, key, data), etag


async def iter_s3_dead_letters(
    bucket: str,
    prefix: str = "",
    *,
    endpoint_url: str | None = None,
    client_config: S3ClientConfig | None = None,
    seen: LetterIds | None = None,
) -> AsyncGenerator[DeadLetter, None]:
    """Every letter stored under ``prefix``, one per id, objects in key order.

    Objects are listed once, at the start, and downloaded one at a time. Close
    the generator when leaving early (``contextlib.aclosing``).

    Args:
        bucket: The bucket.
        prefix: The prefix the sink wrote under.
        endpoint_url: A non-AWS endpoint (MinIO, a test server).
        client_config: Timeouts, retries, region and credentials.
        seen: Keeps the ids read; its ``repeats`` counts the copies folded.
            A private one when ``None``.

    Raises:
        FileNotFoundError: The bucket does not exist or the prefix holds no objects.
        OSError: S3 failed.
        ValueError: A line is not a dead letter; the message names object and line.

    .. versionadded:: 0.1
    """
    config = client_config or S3ClientConfig()
    ids = LetterIds() if seen is None else seen
    everything = DeadLetterFilter()
    try:
        async with contextlib.AsyncExitStack() as stack:
            client, keys = await _open_listed(stack, config, endpoint_url, bucket, prefix)
            for key in keys:
                letters, _ = await _read_object(config, client, bucket, prefix, key)
                while (found := letters.next_letter(ids, everything)) is not None:
                    yield found[1]
    finally:
        if seen is None:
            ids.close()


async def purge_s3_dead_letters(
    bucket: str,
    prefix: str = "",
    *,
    before: float,
    endpoint_url: str | None = None,
    client_config: S3ClientConfig | None = None,
) -> S3PurgeReport:
    """Delete the objects under ``prefix`` whose letters all failed last before ``before``.

    Every object is read and checked first; only then are the old ones
    deleted, each conditionally on its ETag (see the module docstring). A
    corrupt object stops the purge before anything is deleted.

    Raises:
        FileNotFoundError: The bucket does not exist or the prefix holds no objects.
        OSError: S3 failed.
        ValueError: A line is not a dead letter; the message names object and line.

    .. versionadded:: 0.1
    """
    config = client_config or S3ClientConfig()
    where = f"s3://{bucket}/{prefix}"
    with LetterIds() as kept_ids, LetterIds() as gone:
        async with contextlib.AsyncExitStack() as stack:
            client, keys = await _open_listed(stack, config, endpoint_url, bucket, prefix)
            old: list[tuple[str, str, list[str]]] = []
            kept_letters = kept_objects = 0
            for key in keys:
                letters, etag = await _read_object(config, client, bucket, prefix, key)
                stored = [
                    letter
                    for index in range(len(letters.lines))
                    if (letter := letters.letter(index)) is not None
                ]
                ages = [letter.last_failure_at < before for letter in stored]
                if ages and all(ages):
                    old.append((key, etag, [letter.id for letter in stored]))
                    continue
                for letter in stored:
                    kept_ids.add(letter.id)
                if any(ages):
                    kept_letters += sum(ages)
                    kept_objects += 1
            deleted: list[list[str]] = []
            removed_objects = changed = 0
            for key, etag, ids in old:
                with _store_errors(where):
                    outcome = await _delete(config, client, bucket, key, etag)
                removed_objects += outcome == "deleted"
                changed += outcome == "changed"
                if outcome == "deleted":
                    deleted.append(ids)
                elif outcome == "changed":  # still stored: its letters live on
                    for letter_id in ids:
                        kept_ids.add(letter_id)
        # By id: a letter is removed when no copy is left; other copies are repeats.
        removed_letters = repeats = 0
        for ids in deleted:
            for letter_id in ids:
                if letter_id in kept_ids or not gone.add(letter_id):
                    repeats += 1
                else:
                    removed_letters += 1
    return S3PurgeReport(
        removed_letters, removed_objects, kept_letters, kept_objects, changed, repeats
    )


async def _delete(config: S3ClientConfig, client: Any, bucket: str, key: str, etag: str) -> str:
    """Delete ``key`` if its ETag is still ``etag``: ``"deleted"``, ``"changed"`` or ``"gone"``."""
    try:
        await call(config, client.delete_object(Bucket=bucket, Key=key, IfMatch=etag))
    except Exception as exc:
        if is_precondition_failure(exc):
            return "changed"
        if is_missing(exc):
            return "gone"
        raise
    return "deleted"


@final
class S3DeadLetterSource:
    """Replays the letters stored under an S3 prefix: their original records, as consumed.

    Objects are listed when the source opens and read one at a time in key
    order; one partition per object, positions are line indexes (see the
    module docstring for why, and for repeats). A second replay under the
    same pipeline name resumes after the letters already done and sends only
    letters of objects written since. Letters the filter rejects, and repeats
    of a letter already read, are skipped but their lines are passed; repeats
    are counted as the source outcome ``repeats_folded``.

    Args:
        bucket: The bucket.
        prefix: The prefix the :class:`S3DeadLetters` sink wrote under.
        filter: Which letters to replay; all when ``None``.
        rate_limit: At most this many records per second; unlimited when ``None``.
        name: The step name of the source.
        endpoint_url: A non-AWS endpoint (MinIO, a test server).
        client_config: Timeouts, retries, region and credentials.
        clock: Paces the rate limit (a virtual clock in tests).
        id_header: When given, each record also carries the letter's id in a
            header of that name (a replay to a topic marks its messages so).

    Raises:
        ConfigError: ``rate_limit`` is not a positive finite number.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``id_header``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        filter: DeadLetterFilter | None = None,
        rate_limit: float | None = None,
        name: str = "dlq-replay",
        endpoint_url: str | None = None,
        client_config: S3ClientConfig | None = None,
        clock: Clock | None = None,
        id_header: str | None = None,
    ) -> None:
        self.bucket = check_bucket("S3DeadLetterSource", bucket)
        self._id_header = id_header
        self.prefix = prefix
        self.name = name
        self.endpoint_url = endpoint_url
        self.client_config = client_config or S3ClientConfig()
        self._where = f"s3://{bucket}/{prefix}"
        self._filter = filter or DeadLetterFilter()
        self._bucket = (
            None if rate_limit is None else TokenBucket(rate_limit, clock or SystemClock())
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._keys: deque[str] = deque()
        self._positions: dict[str, int] = {}
        self._seen = LetterIds()
        self._started: dict[str, _ObjectLetters] = {}
        self._context: SourceContext | None = None
        self._reported = 0
        self._current: _ObjectLetters | None = None

    def partition_of(self, key: str) -> str:
        """The partition name of the object at ``key``."""
        return f"dlq:s3://{self.bucket}/{key}"

    async def open(self, context: SourceContext) -> None:
        """List the objects; resume each after its checkpointed line.

        When something is left to replay, the objects an earlier run started
        or finished are downloaded first, for the ids before their positions.

        Raises:
            FileNotFoundError: The bucket does not exist or the prefix holds no objects.
            OSError: S3 failed.
            CheckpointError: A checkpointed position lies beyond the end of its
                object (the object was replaced).
        """
        await self.aclose()  # reopening starts a fresh read
        stack = contextlib.AsyncExitStack()
        self._positions = dict(context.positions)
        self._seen = LetterIds()
        self._started = {}
        self._current = None
        try:
            with _store_errors(self._where):
                self._client = await open_client(stack, self.client_config, self.endpoint_url)
                keys = await _letter_keys(
                    self.client_config, self._client, self.bucket, self.prefix
                )
            await self._remember_done(keys)
        except BaseException:
            self._client = None
            self._started = {}
            self._seen.close()
            await stack.aclose()
            raise
        self._stack = stack
        self._keys = deque(keys)
        self._context = context
        self._reported = self._seen.repeats  # an earlier run counted those

    async def _remember_done(self, keys: list[str]) -> None:
        """Read the ids an earlier run handed out, before anything is replayed.

        Eagerly, for every object, so that no copy of a letter replayed before
        is replayed again, whichever object it sits in.
        """
        positions = [self._positions.get(self.partition_of(key), 0) for key in keys]
        if all(position >= OBJECT_COMPLETE for position in positions):
            return  # nothing left to replay: no need to know what was
        for key, position in zip(keys, positions, strict=True):
            if position <= 0:
                continue
            letters = await self._download(key)
            if position >= OBJECT_COMPLETE:
                letters.skip_to(len(letters.lines), self._seen)
            else:
                letters.skip_to(position, self._seen)
                self._started[key] = letters

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next at most ``max_records`` matching letters' records of one object.

        An object with nothing more to replay yields an empty batch that ends
        it; ``None`` once every listed object is done.

        Raises:
            OSError: S3 failed.
            ValueError: A line is not a dead letter, or a payload cannot be decoded.
            CheckpointError: A checkpointed position lies beyond the end of its
                object (the object was replaced).
        """
        if self._bucket is not None:
            max_records = min(max_records, self._bucket.burst)
        while self._current is None:
            if not self._keys:
                await anyio.lowlevel.checkpoint()
                return None
            key = self._keys.popleft()
            position = self._positions.get(self.partition_of(key), 0)
            if position >= OBJECT_COMPLETE:
                continue
            started = self._started.pop(key, None)
            if started is not None:  # read up to its position when the source opened
                self._current = started
            else:
                self._current = await self._download(key)
                self._current.skip_to(position, self._seen)
        return await self._take(self._current, max(1, max_records))

    async def aclose(self) -> None:
        """Close the S3 client and forget the ids read; idempotent."""
        stack, self._stack, self._client, self._current = self._stack, None, None, None
        self._started = {}
        self._seen.close()
        if stack is not None:
            await stack.aclose()
        else:
            await anyio.lowlevel.checkpoint()

    async def _download(self, key: str) -> _ObjectLetters:
        if self._client is None:
            raise RuntimeError(f"source {self.name!r}: read before open")
        with _store_errors(self._where):
            data, _ = await _download(self.client_config, self._client, self.bucket, key)
        return _ObjectLetters(f"s3://{self.bucket}/{key}", key, self.partition_of(key), data)

    def _report_repeats(self) -> None:
        """Count the repeats folded since the last report as the ``repeats_folded`` outcome."""
        folded = self._seen.repeats - self._reported
        if folded and self._context is not None:
            self._reported = self._seen.repeats
            self._context.count("repeats_folded", folded)

    async def _take(self, letters: _ObjectLetters, max_records: int) -> SourceBatch:
        """The next letters of ``letters``: ``max_records``, or up to the one that reaches the
        batch limit in bytes (each weighs its line)."""
        limit = None if self._context is None else self._context.max_batch_bytes
        lines = letters.lines
        found: list[tuple[int, DeadLetter]] = []
        nbytes = 0
        if letters.pending is not None:
            found.append(letters.pending)
            nbytes += len(lines[letters.pending[0]]) + 1
        while (
            len(found) < max_records
            and (limit is None or nbytes < limit)
            and (match := letters.next_letter(self._seen, self._filter))
        ):
            found.append(match)
            nbytes += len(lines[match[0]]) + 1
        # Read one match ahead: without one, this batch finishes the object.
        letters.pending = letters.next_letter(self._seen, self._filter) if found else None
        end = OBJECT_COMPLETE if letters.pending is None else letters.pending[0]
        if letters.pending is None:
            self._current = None
        self._report_repeats()
        if not found:
            await anyio.lowlevel.checkpoint()
            return SourceBatch(letters.partition, [], start=letters.handed, end=end)
        letters.handed = end
        if self._bucket is not None:
            await self._bucket.acquire(len(found))
        return letter_batch(
            letters.partition, found, end=end, id_header=self._id_header, nbytes=nbytes
        )
