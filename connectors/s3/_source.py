"""The S3 source: objects under a prefix, in key order, one partition per object.

Positions
    A partition is named ``s3://<bucket>/<key>``. Its position is the index of
    the next line to read (0-based, empty lines counted but skipped; for CSV
    the header is line 0, as in :class:`~riprap.connectors.files.CsvSource`),
    so a restart resumes inside an object. The batch holding an object's last
    record ends at :data:`OBJECT_COMPLETE` instead of the line count: the
    checkpoint then says "done" without anyone having to count the object's
    lines again, and a restart skips the object without downloading it.
    The checkpoint also keeps a digest of each object's ETag from when it was
    first read (:meth:`S3Source.identities`): an object written over since stops the
    next run with a :class:`~riprap.checkpoints.CheckpointError` naming it,
    where resuming would skip lines of the new one, or all of it.

Reading
    Objects are listed in key order and read one at a time; each object is
    downloaded, decompressed (gzip: by the ``.gz`` suffix unless told) and
    checked whole before its first record is handed over, so it is held in
    memory while it is read. ``max_object_bytes`` (256 MiB by default) bounds
    that: a larger object, by its listed size or once decompressed, is
    quarantined (below) without being downloaded or fully decompressed. JSON Lines
    values are the raw line bytes (decode them in a step with
    :func:`~riprap.connectors.files.parse_json_batch`, so a bad line is one
    record's ``DecodeError``); CSV values are dicts keyed by the header.

Quarantine
    An object that cannot be read as a whole (bad or truncated gzip, bytes
    that are not valid text, a malformed CSV row, more than
    ``max_object_bytes``) is quarantined, never
    skipped silently: the reason is logged, the object is added to
    :attr:`S3Source.quarantined`, counted in :meth:`S3Source.statistics` and
    in the run report and the ``riprap_source_outcomes`` metric (as
    ``objects_quarantined``, through ``SourceContext.count``), ``on_quarantine``
    is called, and with ``quarantine_prefix`` the object is copied to
    ``<quarantine_prefix><key>`` next to ``<key>.reason.json`` (an object too
    large to download is copied by S3 itself, up to the 5 GiB one copy call
    takes; a larger one is set aside without a copy). Only
    then is its position set to :data:`OBJECT_COMPLETE`, and the run goes on
    with the next object. Nothing of a quarantined object reaches the sink.

Verified downloads
    Before any record of an object is used, the bytes read (before gunzip)
    are checked against the object's size in the listing and the answer's
    ``Content-Length``, and against its checksum when it has one; the GET is
    conditional on the listed ETag (see :mod:`._reads`). A short, cut-off or
    corrupt read is retried with a fresh GET and, if it persists, stops the
    run with :class:`S3ReadError` naming the object: a healthy object is never
    quarantined for a bad transfer, and never read in part.

Errors from S3 itself (throttling, 5xx, timeouts) are retried by botocore
(``client_config.max_attempts``, 3 by default), incomplete reads by the source
(as many attempts); each retry is reported to the pipeline's policy hooks
(``SourceContext.policy_hooks``), so it counts in the run report and
``riprap_retries_total``. An error that remains is raised by ``read`` and
stops the run, which resumes from the checkpoint when restarted.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, final

import anyio
import anyio.lowlevel
import orjson

from riprap import ConfigError, SourceBatch, SourceContext, SystemClock
from riprap.checkpoints import CheckpointError
from riprap.lowlevel import PartitionIdentities

from ._client import Listed, S3ClientConfig, call, check_bucket, list_objects, open_client
from ._formats import (
    COPY_LIMIT,
    DEFAULT_MAX_OBJECT_BYTES,
    CorruptObjectError,
    Format,
    ObjectTooLargeError,
    check_max_object_bytes,
    decode_bytes,
    object_bytes,
    too_large,
)
from ._reads import download
from ._retries import report_retries

log = logging.getLogger("riprap.connectors.s3")

_REASON = ".reason.json"
"""Suffix of the note next to a quarantined copy."""

OBJECT_COMPLETE = 1 << 62
"""The position that marks an object as completely read (or quarantined)."""


@final
@dataclass(frozen=True, slots=True)
class QuarantinedObject:
    """An object the source set aside.

    Attributes:
        key: The object's key.
        partition: Its partition name, ``s3://bucket/key``.
        reason: Why it could not be read.
        quarantine_key: Where its copy is (``None`` without ``quarantine_prefix``).
        at: Wall-clock time of the quarantine, seconds since the epoch.
    """

    key: str
    partition: str
    reason: str
    quarantine_key: str | None
    at: float


@final
@dataclass(frozen=True, slots=True)
class S3SourceStatistics:
    """What an :class:`S3Source` has done in this run.

    Attributes:
        objects_listed: Distinct objects seen in listings.
        objects_read: Objects downloaded and handed over (wholly or from a checkpoint).
        objects_skipped: Objects the checkpoint says are complete (not downloaded).
        objects_quarantined: Objects set aside as corrupt.
        records: Records handed over.
    """

    objects_listed: int
    objects_read: int
    objects_skipped: int
    objects_quarantined: int
    records: int


@dataclass(slots=True)
class _Object:
    """The object being read: its records, their line offsets, the next index, and the
    bytes of its content (decompressed), which its records share by count."""

    partition: str
    values: list[Any]
    offsets: list[int]
    index: int
    nbytes: int

    def weight(self, start: int, stop: int) -> int:
        """The bytes records ``start..stop-1`` stand for (the parts sum to the whole)."""
        count = len(self.values)
        return self.nbytes * stop // count - self.nbytes * start // count

    def fitting(self, limit: int) -> int:
        """Records of average weight that reach ``limit`` bytes (at least one)."""
        count = len(self.values)
        return max(1, -(-limit * count // self.nbytes)) if self.nbytes else count


QuarantineHook = Callable[[QuarantinedObject], "Awaitable[None] | None"]


def _short(etag: str) -> str:
    """A 64-bit digest of ``etag``: the checkpoint holds one per object ever read."""
    return hashlib.blake2b(etag.encode(), digest_size=8).hexdigest()


@final
class S3Source:
    """Reads JSON Lines or CSV objects under ``prefix`` (see the module docstring).

    Args:
        bucket: The bucket.
        prefix: Only keys starting with this are read.
        name: The step name of the source.
        format: ``"jsonl"`` (raw line bytes) or ``"csv"`` (dicts).
        gzip: Decompress: ``None`` decides by the ``.gz`` suffix.
        poll_interval: ``None``: end once every listed object is read;
            seconds: list again after that long and keep reading new objects.
        key_filter: Read only the keys for which it returns true (a date
            window, a suffix); other keys are not partitions of this source.
        quarantine_prefix: Where corrupt objects are copied (with a reason file).
        on_quarantine: Called (sync or async) for every quarantined object.
        encoding: Text encoding of CSV objects (JSON Lines must be UTF-8).
        delimiter: CSV field separator.
        endpoint_url: A non-AWS endpoint (MinIO, a test server).
        client_config: Timeouts, retries, region and credentials.
        max_object_bytes: The largest object read, as stored and once
            decompressed: each is held in memory while it is read. A larger
            one is quarantined.

    Raises:
        ConfigError: An option is invalid.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        name: str = "s3",
        format: Format = "jsonl",
        gzip: bool | None = None,
        poll_interval: float | None = None,
        key_filter: Callable[[str], bool] | None = None,
        quarantine_prefix: str | None = None,
        on_quarantine: QuarantineHook | None = None,
        encoding: str = "utf-8",
        delimiter: str = ",",
        endpoint_url: str | None = None,
        client_config: S3ClientConfig | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ) -> None:
        if format not in ("jsonl", "csv"):
            raise ConfigError("format", f"expected 'jsonl' or 'csv', not {format!r}")
        self.max_object_bytes = check_max_object_bytes("S3Source", max_object_bytes)
        if poll_interval is not None and not 0 < poll_interval < math.inf:
            raise ConfigError(
                "poll_interval", f"must be positive and finite, or None, got {poll_interval!r}"
            )
        if quarantine_prefix is not None and prefix and quarantine_prefix.startswith(prefix):
            raise ConfigError("quarantine_prefix", "must not lie under the source's prefix")
        self.name = name
        self.bucket = check_bucket("S3Source", bucket)
        self.prefix = prefix
        self.format = format
        self.gzip = gzip
        self.poll_interval = poll_interval
        self.key_filter = key_filter
        self.quarantine_prefix = quarantine_prefix
        self.on_quarantine = on_quarantine
        self.encoding = encoding
        self.delimiter = delimiter
        self.endpoint_url = endpoint_url
        self.client_config = client_config or S3ClientConfig()
        self.quarantined: list[QuarantinedObject] = []
        """Every object quarantined since the source was created."""
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._context: SourceContext | None = None
        self._positions: dict[str, int] = {}
        self._seen: set[str] = set()
        self._listed: dict[str, Listed] = {}
        self._pending: deque[str] = deque()
        self._current: _Object | None = None
        self._listed_once = False
        self._counts = {"read": 0, "skipped": 0, "records": 0}
        self._lock = anyio.Lock()
        self._etags = PartitionIdentities()  # per object, the ETag it was read from the start at

    def requeue(self, *, name: str | None = None) -> S3Source:
        """A source over this source's quarantined copies, to read them again once fixed.

        It reads ``quarantine_prefix`` (the ``.reason.json`` notes aside) with
        this source's format, decompression, encoding and client settings, and
        sets nothing aside itself: an object still corrupt is logged and
        counted as quarantined, and stays where it is. Its partitions are the
        copies' names, so a pipeline run with it under a name of its own (as
        ``riprap s3 requeue`` does) keeps positions apart from this source's.

        Args:
            name: The step name (default: this source's).

        Raises:
            ConfigError: This source has no ``quarantine_prefix``.

        .. versionadded:: 0.2
        """
        if self.quarantine_prefix is None:
            raise ConfigError(
                "quarantine_prefix",
                f"source {self.name!r} keeps no copies of quarantined objects to requeue; "
                "give it a quarantine_prefix",
            )
        return S3Source(
            self.bucket,
            self.quarantine_prefix,
            name=name or self.name,
            format=self.format,
            gzip=self.gzip,
            key_filter=_not_a_reason,
            encoding=self.encoding,
            delimiter=self.delimiter,
            endpoint_url=self.endpoint_url,
            client_config=self.client_config,
            max_object_bytes=self.max_object_bytes,
        )

    whole_partitions = True
    """A worker's share is whole objects (partitions), each always its own."""

    def for_worker(self, index: int, count: int) -> S3Source:
        """This source for worker ``index`` of ``count`` on one machine: the keys that hash to it.

        A key belongs to worker ``zlib.crc32(key) % count`` (UTF-8), on top of
        ``key_filter``: stable across runs, and a key added later does not move
        the others, so each worker's positions stay its own.

        Raises:
            ConfigError: ``index`` is not in ``range(count)``.
        """
        if not 0 <= index < count:
            raise ConfigError(
                "workers", f"source {self.name!r}: worker {index} is not in 0..{count - 1}"
            )
        wanted = self.key_filter or _any_key
        clone = S3Source(
            self.bucket,
            self.prefix,
            name=self.name,
            format=self.format,
            gzip=self.gzip,
            poll_interval=self.poll_interval,
            key_filter=lambda key: zlib.crc32(key.encode()) % count == index and wanted(key),
            quarantine_prefix=self.quarantine_prefix,
            on_quarantine=self.on_quarantine,
            encoding=self.encoding,
            delimiter=self.delimiter,
            endpoint_url=self.endpoint_url,
            client_config=self.client_config,
            max_object_bytes=self.max_object_bytes,
        )
        return clone

    def partition_of(self, key: str) -> str:
        """The partition name of the object ``key``."""
        return f"s3://{self.bucket}/{key}"

    def statistics(self) -> S3SourceStatistics:
        """Counts of this run (quarantines since creation)."""
        return S3SourceStatistics(
            objects_listed=len(self._seen),
            objects_read=self._counts["read"],
            objects_skipped=self._counts["skipped"],
            objects_quarantined=len(self.quarantined),
            records=self._counts["records"],
        )

    def lag(self) -> dict[str, int]:
        """Records of the object being read not yet handed over (later objects are not counted)."""
        current = self._current
        if current is None:
            return {}
        return {current.partition: len(current.values) - current.index}

    def identities(self, positions: Mapping[str, int] | None = None) -> Mapping[str, str]:
        """Per object (partition), a digest of its ETag when it was first read from its start.

        Saved with the positions: a later run refuses an object whose listed
        ETag differs (it was written over), instead of resuming in it or
        skipping it as read.
        """
        return self._etags.snapshot()

    async def open(self, context: SourceContext) -> None:
        """Open the S3 client and remember where each object resumes."""
        async with self._lock:
            await self._close()
            stack = contextlib.AsyncExitStack()
            self._client = await open_client(stack, self.client_config, self.endpoint_url)
            report_retries(
                self._client,
                context.policy_hooks,
                stage=self.name,
                clock=context.clock or SystemClock(),
            )
            self._stack = stack
            self._context = context
            self._positions = dict(context.positions)
            self._etags = PartitionIdentities(context.identities)
            self._seen.clear()
            self._listed.clear()
            self._pending.clear()
            self._current = None
            self._listed_once = False
            self._counts = {"read": 0, "skipped": 0, "records": 0}

    async def read(self, max_records: int) -> SourceBatch | None:
        """The next at most ``max_records`` records of the current object; ``None`` at the end.

        Raises:
            CheckpointError: A checkpoint resumes past the end of its object.
            S3ReadError: An object kept arriving short, cut off or corrupt.
            botocore.exceptions.ClientError: S3 refused a call (after botocore's retries).
            TimeoutError: An S3 call took longer than ``client_config.call_timeout``.
        """
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        async with self._lock:
            if self._client is None:
                raise RuntimeError(f"source {self.name!r} is not open")
            while True:
                if self._current is not None:
                    return self._take(self._current, max_records)
                if self._pending:
                    batch = await self._load(self._pending[0])
                    self._pending.popleft()
                    if batch is not None:
                        return batch
                    continue
                if self._listed_once and self.poll_interval is None:
                    return None
                if self._listed_once:
                    await anyio.sleep(self.poll_interval or 0)
                await self._list()

    async def aclose(self) -> None:
        """Close the S3 client."""
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _list(self) -> None:
        """Queue the keys not seen yet, in key order."""
        listing = await list_objects(self.client_config, self._client, self.bucket, self.prefix)
        wanted = self.key_filter or _any_key
        fresh = {
            listed.key: listed
            for listed in listing
            if listed.key not in self._seen and not listed.key.endswith("/") and wanted(listed.key)
        }
        self._listed.update(fresh)
        self._seen.update(fresh)
        self._pending.extend(sorted(fresh))
        self._listed_once = True

    async def _load(self, key: str) -> SourceBatch | None:
        """Download and check ``key``; a completing empty batch, or ``None`` to go on."""
        partition = self.partition_of(key)
        position = self._positions.get(partition, 0)
        listed = self._listed.get(key)
        etag = None if listed is None or listed.etag is None else _short(listed.etag)
        known = self._etags.get(partition)
        if position > 0 and known is not None and etag is not None and etag != known:
            assert listed is not None
            read = "whole" if position >= OBJECT_COMPLETE else f"up to line {position}"
            raise CheckpointError(
                f"{partition}: the checkpoint has it read {read}, but the object was "
                f"written over since (its ETag is now {listed.etag}); to read it from its "
                "start, set the partition's position to 0 (riprap checkpoint set)"
            )
        if etag is not None and (position == 0 or known is None):
            self._etags.note(partition, etag)
        if position >= OBJECT_COMPLETE:
            self._counts["skipped"] += 1
            self._listed.pop(key, None)
            await anyio.lowlevel.checkpoint()
            return None
        try:
            if listed is not None and listed.size > self.max_object_bytes:
                del self._listed[key]
                raise ObjectTooLargeError(
                    too_large(listed.size, self.max_object_bytes), listed.size
                )
            data = await self._download(key)
        except ObjectTooLargeError as exc:  # nothing of it read: S3 copies it aside
            await self._quarantine(key, partition, str(exc), None, exc.size or 0)
            return SourceBatch(partition, [], start=position, end=OBJECT_COMPLETE)
        try:
            content = self._content(key, data)
            values, offsets, lines = self._decode(content)
        except CorruptObjectError as exc:
            await self._quarantine(key, partition, str(exc), data)
            return SourceBatch(partition, [], start=position, end=OBJECT_COMPLETE)
        if position > lines:
            raise CheckpointError(
                f"{partition}: the checkpoint resumes at line {position}, but the object has "
                f"only {lines} lines; was it replaced?"
            )
        index = next((i for i, offset in enumerate(offsets) if offset >= position), len(offsets))
        self._counts["read"] += 1
        if index == len(offsets):
            return SourceBatch(partition, [], start=position, end=OBJECT_COMPLETE)
        self._current = _Object(partition, values, offsets, index, len(content))
        return None

    async def _download(self, key: str) -> bytes:
        """The whole object, verified (retried if it arrives incomplete).

        Raises:
            ObjectTooLargeError: It grew past ``max_object_bytes`` since it was listed.
        """
        context = self._context
        try:
            data, _ = await download(
                self.client_config,
                self._client,
                self.bucket,
                key,
                listed=self._listed.get(key),
                clock=context.clock if context is not None else None,
                hooks=context.policy_hooks if context is not None else (),
                stage=self.name,
                max_bytes=self.max_object_bytes,
            )
        finally:
            self._listed.pop(key, None)
        return data

    def _take(self, current: _Object, max_records: int) -> SourceBatch:
        limit = self._context.max_batch_bytes if self._context is not None else None
        if limit is not None:
            max_records = min(max_records, current.fitting(limit))
        start, stop = current.index, min(current.index + max_records, len(current.values))
        offsets = current.offsets[start:stop]
        last = stop == len(current.values)
        end = OBJECT_COMPLETE if last else current.offsets[stop]
        contiguous = offsets[-1] - offsets[0] + 1 == len(offsets)
        batch = SourceBatch(
            current.partition,
            current.values[start:stop],
            start=offsets[0],
            end=end,
            offsets=None if contiguous else offsets,
            nbytes=current.weight(start, stop),
        )
        current.index = stop
        if last:
            self._current = None
        self._counts["records"] += len(offsets)
        return batch

    def _content(self, key: str, data: bytes) -> bytes:
        """A downloaded object's content, decompressed when it is gzip.

        Raises:
            CorruptObjectError: Not valid gzip, or larger than ``max_object_bytes``.
        """
        return object_bytes(key, data, gzip=self.gzip, limit=self.max_object_bytes)

    def _decode(self, content: bytes) -> tuple[list[Any], list[int], int]:
        """``(values, line offsets, line count)`` of a whole object's content.

        Raises:
            CorruptObjectError: The object cannot be read as a whole.
        """
        return decode_bytes(
            content, format=self.format, encoding=self.encoding, delimiter=self.delimiter
        )

    async def _quarantine(
        self, key: str, partition: str, reason: str, data: bytes | None, size: int = 0
    ) -> None:
        """Set ``key`` aside durably before its position moves past it.

        ``data`` is the object's bytes, or ``None`` for S3 to copy the object
        itself (one of ``size`` bytes over :data:`COPY_LIMIT` is not copied).
        """
        target = None
        if self.quarantine_prefix is not None and (data is not None or size <= COPY_LIMIT):
            target = f"{self.quarantine_prefix}{key}"
            request = (
                self._client.copy_object(
                    Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key}
                )
                if data is None
                else self._client.put_object(
                    Bucket=self.bucket, Key=target, Body=data, ChecksumAlgorithm="CRC32"
                )
            )
            await call(self.client_config, request)
            note = {"source": partition, "reason": reason, "quarantined_at": time.time()}
            await call(
                self.client_config,
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=f"{target}{_REASON}",
                    Body=orjson.dumps(note),
                    ContentType="application/json",
                ),
            )
        entry = QuarantinedObject(key, partition, reason, target, time.time())
        self.quarantined.append(entry)
        if self._context is not None:
            self._context.count("objects_quarantined", 1)
        log.warning("quarantined %s: %s (copy: %s)", partition, reason, target)
        if self.on_quarantine is not None:
            result = self.on_quarantine(entry)
            if inspect.isawaitable(result):
                await result


def _any_key(key: str) -> bool:
    return True


def _not_a_reason(key: str) -> bool:
    return not key.endswith(_REASON)
