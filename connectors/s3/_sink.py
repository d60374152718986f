"""The S3 sink: each source partition's records in objects cut by count, size and age.

Objects are named by the positions of the records they hold (see
:mod:`._layout`)::

    <prefix><partition, percent-encoded>/<first offset:020d>-<last offset:020d>.jsonl[.gz]

How records are grouped, and how a replay lines up with what is stored, is
:mod:`._assembly`'s job; this module encodes records, holds their acks, and
talks to S3.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip as gzip_module
import io
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, final

import anyio
import anyio.lowlevel
import anyio.to_thread

from riprap import ConfigError, DataError, SystemClock
from riprap.connectors.files import encode_json_lines
from riprap.lowlevel import optional_limit, optional_seconds

from ._assembly import Assembler, Ready
from ._client import S3ClientConfig, call, check_bucket, open_client
from ._layout import Position, StoredListing, directory, open_listing, position_text
from ._retries import report_retries

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import timedelta

    from riprap import Batch, Clock, SinkContext, SourceBatch

Format = Literal["jsonl", "csv"]
Encryption = Literal["AES256", "aws:kms"]

_THREAD_GZIP = 1 << 20
"""Bodies larger than this are compressed in a worker thread (the loop stays free)."""


@final
@dataclass(frozen=True, slots=True)
class S3SinkStatistics:
    """What an :class:`S3Sink` has done since it was opened.

    Attributes:
        objects_written: PUTs that succeeded (a replay's rewrites count again).
        objects_deleted: Stored objects deleted because a replay cut their
            records differently (their records are in the objects written instead).
        records_filling: Records in objects not cut yet.
        records_skipped: Replayed records found already stored (see the class docstring).
    """

    objects_written: int
    objects_deleted: int
    records_filling: int
    records_skipped: int


@final
class S3Sink:
    """Writes each source partition's records as JSON Lines or CSV objects, exactly once.

    **Objects.** Records of one partition go into one object at a time, named
    ``<partition>/<first>-<last>.<format>[.gz]`` by the source positions of its
    first and last record. An object is cut when it holds ``max_records``
    records, when the next record would take its body (encoded, before
    compression; a CSV header counts) past ``max_bytes``, or ``max_age``
    seconds after its first record arrived, whether or not more records come.
    Without any of the three, each write's records make their own objects (one
    per batch and partition). An object is never empty; a single record larger
    than ``max_bytes`` is an object of its own.

    **Acks.** A record is done only once the PUT of its object succeeded: the
    sink retains the acks of the records it holds, so a checkpoint never passes
    a record that is not in S3. Held records count against the pipeline's
    ``max_in_flight``; so that the source can always read on, an object is also
    cut (earlier than its limits) when the sink would otherwise hold more than
    ``max_in_flight - batch_size`` source records, and a ``max_records`` above
    that is refused. A partition drained in a rebalance is written at once.

    **Exactly once.** Count and size cuts fall on the same records in every
    run, age cuts do not; so before a partition's first record the sink lists
    what is stored from that record on (one listing call when nothing is).
    Replayed records that an existing object already holds together with
    records before the checkpoint are skipped; an object being filled stops
    before the next stored object's first record, and one that starts where a
    stored object starts ends where it ends, so the same object is rewritten
    under the same name (with gzip, byte for byte). A stored object whose
    records are cut differently this time is deleted before the object that
    takes them over is written. After a crash at any point (kill -9 included),
    every record is in exactly one object once the replay is done.

    The guarantee rests on three things: the steps before the sink give the
    same records for the same input (a replay of a record yields what it did
    the first time); one writer per partition (the checkpoint's fencing stops a
    zombie's checkpoints, not its PUTs); and each partition's records arriving
    in position order (reordering within a batch, as an unordered step does,
    is undone; across batches it stops the run). A step whose output differs
    on replay can leave a record in two objects. Rerunning from an empty
    checkpoint (a backfill with ``--fresh``) rewrites the objects with the
    records of the new run and deletes those it no longer cuts the same way.

    JSON Lines items are serialised with orjson, except ``bytes``, written as
    they are (a raw line from a JSON Lines source). CSV items are dicts; every
    object starts with the header ``fieldnames``; a field not in it is a
    :class:`~riprap.DataError`.

    Args:
        bucket: The bucket (it must exist).
        prefix: Key prefix of the objects (e.g. ``"out/"``).
        name: The step name of the sink.
        format: ``"jsonl"`` or ``"csv"``.
        fieldnames: The CSV columns (required for CSV).
        gzip: Compress objects (``.gz`` is appended to their names).
        max_records: Records per object (``None``: no count limit).
        max_bytes: Body bytes per object before compression (``None``: no limit).
        max_age: Seconds (or a ``timedelta``) from an object's first record to
            its cut at the latest (``None``: objects wait for a count or size cut).
        clock: The clock ``max_age`` is measured on; in a pipeline it must be
            the pipeline's (the default: the pipeline's, else the system clock).
        sse: Server-side encryption: ``None``, ``"AES256"`` or ``"aws:kms"``.
        sse_kms_key_id: The KMS key for ``"aws:kms"`` (``None``: the bucket's default).
        endpoint_url: A non-AWS endpoint (MinIO, a test server).
        client_config: Timeouts, retries, region and credentials.

    Raises:
        ConfigError: An option is invalid (named by the error).

    .. versionadded:: 0.1
    """

    idempotent = True
    """A replayed record ends up in the object it was written to, or in one that replaces it."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        name: str = "s3",
        format: Format = "jsonl",
        fieldnames: Sequence[str] | None = None,
        gzip: bool = False,
        max_records: int | None = None,
        max_bytes: int | None = None,
        max_age: float | timedelta | None = None,
        clock: Clock | None = None,
        sse: Encryption | None = None,
        sse_kms_key_id: str | None = None,
        endpoint_url: str | None = None,
        client_config: S3ClientConfig | None = None,
    ) -> None:
        if format not in ("jsonl", "csv"):
            raise ConfigError("format", f"expected 'jsonl' or 'csv', not {format!r}")
        if format == "csv" and not fieldnames:
            raise ConfigError("fieldnames", "a CSV sink needs its columns")
        if sse not in (None, "AES256", "aws:kms"):
            raise ConfigError("sse", f"expected None, 'AES256' or 'aws:kms', not {sse!r}")
        if sse_kms_key_id is not None and sse != "aws:kms":
            raise ConfigError("sse_kms_key_id", "needs sse='aws:kms'")
        self.name = name
        self.bucket = check_bucket("S3Sink", bucket)
        self.prefix = prefix
        self.format = format
        self.fieldnames = list(fieldnames or ())
        self.gzip = gzip
        self.max_records = optional_limit("max_records", max_records)
        self.max_bytes = optional_limit("max_bytes", max_bytes)
        self.max_age = optional_seconds("max_age", max_age)
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.endpoint_url = endpoint_url
        self.client_config = client_config or S3ClientConfig()
        self.objects_written = 0
        """PUTs that succeeded since the sink was opened (replays count again)."""
        self._given_clock = clock
        self._clock: Clock = clock or SystemClock()
        self._hooks: tuple[Callable[[Any], None], ...] = ()
        self._hold_limit: int | None = None
        self._header = self._csv_header() if format == "csv" else b""
        self._holds = max_records is not None or max_bytes is not None or max_age is not None
        self._assembler = self._new_assembler()
        self._listings: dict[str, StoredListing] = {}
        self._deleted = 0
        self._taken: Batch | None = None
        self._lock = anyio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    def object_key(self, partition: str, first: Position, last: Position) -> str:
        """The key of the object holding ``partition``'s records ``first`` to ``last``."""
        suffix = self.format + (".gz" if self.gzip else "")
        name = f"{position_text(first)}-{position_text(last)}.{suffix}"
        return directory(self.prefix, partition) + name

    def bind(self, context: SinkContext) -> None:
        """Take the pipeline's clock and in-flight bound (called by the runtime).

        Raises:
            ConfigError: ``clock`` is not the pipeline's, or ``max_records`` cannot
                be held within ``max_in_flight - batch_size``.
        """
        if self._given_clock is not None and self._given_clock is not context.clock:
            raise ConfigError("clock", "must be the pipeline's clock, which wakes the sink")
        self._clock = context.clock
        self._hooks = context.policy_hooks
        self._hold_limit = context.max_in_flight - context.batch_size
        if self.max_records is not None and self.max_records > self._hold_limit:
            raise ConfigError(
                "max_records",
                f"{self.max_records} records can never be held: the pipeline keeps at most "
                f"max_in_flight - batch_size = {context.max_in_flight} - {context.batch_size} "
                f"= {self._hold_limit} records in flight; raise max_in_flight or lower it",
            )

    def wake_at(self) -> float | None:
        """When an object being filled reaches ``max_age`` (on the clock), if ever."""
        return self._assembler.wake_at()

    def statistics(self) -> S3SinkStatistics:
        """Counts since the sink was opened."""
        return S3SinkStatistics(
            objects_written=self.objects_written,
            objects_deleted=self._deleted,
            records_filling=self._assembler.filling(),
            records_skipped=self._assembler.skipped,
        )

    async def open(self) -> None:
        """Open the S3 client; forget what an earlier run held."""
        async with self._lock:
            if self._client is None:
                stack = contextlib.AsyncExitStack()
                # botocore retries nothing (unless told to): the sink policy retries a
                # failed write, so that every retry is counted, logged and waited out.
                self._client = await open_client(
                    stack, self.client_config, self.endpoint_url, attempts=1
                )
                report_retries(self._client, self._hooks, stage=self.name, clock=self._clock)
                self._stack = stack
            self._assembler = self._new_assembler()
            self._listings = {}
            self._taken = None
            self.objects_written = self._deleted = 0

    async def write(self, batch: Batch) -> None:
        """Add the batch's records to their objects; write the objects that are cut.

        An empty batch writes the objects whose ``max_age`` has passed. A
        retried call with the same batch (after a failed PUT) only writes.

        Raises:
            DataError: An item cannot be encoded; nothing of the batch is taken.
            RuntimeError: An item's source position is unknown (it cannot be
                named), or a partition's records came out of order.
            botocore.exceptions.ClientError: S3 refused a call (throttling and
                5xx are classified transient and retried by the sink policy;
                botocore itself does not retry unless ``client_config.max_attempts``
                says so).
            TimeoutError: A call took longer than ``client_config.call_timeout``.
        """
        async with self._lock:
            client = self._open_client()
            if batch is not self._taken:
                await self._take(client, batch, self._clock.monotonic())
                self._taken = batch
            await self._write_ready(client)
            self._taken = None

    async def flush(self) -> None:
        """Cut every object being filled and write it."""
        async with self._lock:
            if self._client is None:
                await anyio.lowlevel.checkpoint()
                return
            self._assembler.cut_all()
            await self._write_ready(self._client)

    async def aclose(self) -> None:
        """Close the S3 client; records not written stay not done (they are replayed)."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
        else:
            await anyio.lowlevel.checkpoint()

    # -- taking records ------------------------------------------------------------

    async def _take(self, client: Any, batch: Batch, now: float) -> None:
        """Encode the batch, line its partitions up with S3, add its records (arrived ``now``)."""
        parts = self._encode(batch)
        for partition, offsets, _, _ in parts:
            await self._list_through(client, partition, offsets)
        assembler = self._assembler
        assembler.cut_due(now)
        placed = [assembler.place(partition, offsets) for partition, offsets, _, _ in parts]
        ack = batch.ack
        for (partition, _, chunks, sources), positions in zip(parts, placed, strict=True):
            for position, chunk, source in zip(positions, chunks, sources, strict=True):
                assembler.add(partition, position, chunk, ack, source, now)
        if not self._holds:
            assembler.cut_all()
        limit = self._hold_limit
        while limit is not None and assembler.held() > limit:
            assembler.cut_oldest()

    async def _list_through(self, client: Any, partition: str, offsets: list[int]) -> None:
        """Know ``partition``'s stored objects up to past ``offsets`` (listing on first use)."""
        listing = self._listings.get(partition)
        if listing is None:
            folder = directory(self.prefix, partition)
            holder, listing = await open_listing(
                self.client_config, client, self.bucket, folder, offsets[0]
            )
            self._listings[partition] = listing
            self._assembler.begin(partition, holder, listing.listed)
        await listing.through(offsets[-1])

    def _encode(self, batch: Batch) -> list[tuple[str, list[int], list[bytes], list[SourceBatch]]]:
        """``(partition, offsets, encoded records, source batches)`` per partition, in order.

        Raises:
            DataError: An item cannot be encoded.
            RuntimeError: An item's source position is unknown.
        """
        parts: dict[str, tuple[list[int], list[int], list[SourceBatch]]] = {}
        for index, where in enumerate(batch.sources()):
            if where is None:
                raise RuntimeError(
                    f"sink {self.name!r}: item {index} has no source position, so its "
                    "object cannot be named deterministically"
                )
            source, at = where
            offsets, indexes, sources = parts.setdefault(source.partition, ([], [], []))
            offsets.append(source.offset_of(at))
            indexes.append(index)
            sources.append(source)
        encoded = []
        for partition, (offsets, indexes, sources) in parts.items():
            chunks = (
                self._rows(batch, indexes) if self.format == "csv" else self._lines(batch, indexes)
            )
            encoded.append((partition, *_in_order(offsets, chunks, sources)))
        return encoded

    def _lines(self, batch: Batch, indexes: list[int]) -> list[bytes]:
        """JSON Lines of the items at ``indexes``, without their newlines (added in ``_body``)."""
        # One encoder call per part; a JSON line never holds a raw newline, so it splits cleanly.
        return encode_json_lines(batch, indexes, self._record_error).split(b"\n")[:-1]

    def _rows(self, batch: Batch, indexes: list[int]) -> list[bytes]:
        """CSV rows of the items at ``indexes``, line ends included (a field may hold one)."""
        return [self._csv_row(batch, index) for index in indexes]

    def _csv_row(self, batch: Batch, index: int) -> bytes:
        item = batch.items[index]
        if not isinstance(item, dict):
            raise self._record_error(batch, index, f"expected a dict, got {type(item).__name__}")
        text = io.StringIO()
        try:
            csv.DictWriter(text, self.fieldnames, extrasaction="raise").writerow(item)
        except ValueError as exc:
            raise self._record_error(batch, index, str(exc)) from None
        try:
            return text.getvalue().encode()
        except UnicodeEncodeError as exc:  # a lone surrogate, from bytes a decoder escaped
            problem = f"not valid Unicode text at character {exc.start}: {exc.reason}"
            raise self._record_error(batch, index, problem) from None

    def _csv_header(self) -> bytes:
        text = io.StringIO()
        csv.DictWriter(text, self.fieldnames).writeheader()
        return text.getvalue().encode()

    def _record_error(self, batch: Batch, index: int, problem: str) -> DataError:
        partition, offset = batch.position(index)
        where = f"the record at {partition}@{offset}"
        return DataError(f"sink {self.name!r}: cannot write {where}: {problem}")

    # -- writing objects -----------------------------------------------------------

    async def _write_ready(self, client: Any) -> None:
        """PUT every cut object in order (deleting what it replaces first); release its acks."""
        ready = self._assembler.ready
        while ready:
            done = ready[0]
            while done.deletes:
                key = done.deletes[0]
                await call(self.client_config, client.delete_object(Bucket=self.bucket, Key=key))
                done.deletes.pop(0)
                self._deleted += 1
            body = await self._body(done)
            await call(self.client_config, client.put_object(**self._put_args(done.key, body)))
            ready.popleft()
            self.objects_written += 1
            for ack in done.acks:
                ack.release()

    async def _body(self, done: Ready) -> bytes:
        if self.format == "csv":
            data = self._header + b"".join(done.chunks)
        else:
            data = b"\n".join(done.chunks) + b"\n"
        if not self.gzip:
            return data
        # mtime=0: the same records always make the same bytes (and ETag).
        compress = functools.partial(gzip_module.compress, data, mtime=0)
        if len(data) > _THREAD_GZIP:
            return await anyio.to_thread.run_sync(compress)
        return compress()

    def _put_args(self, key: str, body: bytes) -> dict[str, Any]:
        # No Content-Encoding: HTTP clients would decompress on download and
        # the object would no longer be what its ".gz" name says.
        content_type = "text/csv" if self.format == "csv" else "application/x-ndjson"
        if self.gzip:
            content_type = "application/gzip"
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
            "ChecksumAlgorithm": "CRC32",  # S3 checks the upload, and readers can check it
        }
        if self.sse is not None:
            args["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id is not None:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args

    def _open_client(self) -> Any:
        if self._client is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        return self._client

    def _new_assembler(self) -> Assembler:
        return Assembler(
            max_records=self.max_records,
            max_bytes=self.max_bytes,
            max_age=self.max_age,
            header=self._header,
            record_end=0 if self.format == "csv" else 1,
            key=self.object_key,
        )


def _in_order(
    offsets: list[int], chunks: list[bytes], sources: list[SourceBatch]
) -> tuple[list[int], list[bytes], list[SourceBatch]]:
    """One partition's records sorted by offset (stably), as an unordered step may mix them."""
    if all(a <= b for a, b in itertools.pairwise(offsets)):
        return offsets, chunks, sources
    order = sorted(range(len(offsets)), key=offsets.__getitem__)
    return (
        [offsets[i] for i in order],
        [chunks[i] for i in order],
        [sources[i] for i in order],
    )
