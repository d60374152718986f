"""The S3 sink: one object per incoming batch and partition, named by the positions it holds.

Each batch is split by source partition (in item order) and every part is
written as one object::

    <prefix><partition, percent-encoded>/<first offset:020d>-<last offset:020d>.jsonl[.gz]

``write`` returns only after every PUT of the batch succeeded, so a batch is
done (and its positions may be checkpointed) only once it is in S3. The name
depends only on which source records the object holds, so a replay after a
crash rewrites the same objects with the same bytes (gzip without a timestamp):
the sink is idempotent (I2). That holds as long as batches are cut the same way
on a replay, which riprap's sources do (a batch is at most ``batch_size``
records, starting at the checkpointed position); a custom stage that re-batches
by time would break it.

Nothing is buffered across batches: an object holds at most ``batch_size``
records. Raise the pipeline's ``batch_size`` for bigger objects.
"""

from __future__ import annotations

import contextlib
import csv
import gzip as gzip_module
import io
from typing import TYPE_CHECKING, Any, Literal, final

import anyio.lowlevel

from riprap import ConfigError, DataError
from riprap.connectors.files import encode_json_lines

from ._client import S3ClientConfig, call, open_client, sanitize

if TYPE_CHECKING:
    from collections.abc import Sequence

    from riprap import Batch

Format = Literal["jsonl", "csv"]
Encryption = Literal["AES256", "aws:kms"]


@final
class S3Sink:
    """Writes batches as JSON Lines or CSV objects; idempotent (see the module docstring).

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
        sse: Server-side encryption: ``None``, ``"AES256"`` or ``"aws:kms"``.
        sse_kms_key_id: The KMS key for ``"aws:kms"`` (``None``: the bucket's default).
        endpoint_url: A non-AWS endpoint (MinIO, a test server).
        client_config: Timeouts, retries, region and credentials.

    Raises:
        ConfigError: An option is invalid.

    .. versionadded:: 0.1
    """

    idempotent = True
    """Replayed records overwrite the object they were written to."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        name: str = "s3",
        format: Format = "jsonl",
        fieldnames: Sequence[str] | None = None,
        gzip: bool = False,
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
        self.bucket = bucket
        self.prefix = prefix
        self.format = format
        self.fieldnames = list(fieldnames or ())
        self.gzip = gzip
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.endpoint_url = endpoint_url
        self.client_config = client_config or S3ClientConfig()
        self.objects_written = 0
        """PUTs that succeeded in this process (replays count again)."""
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    def object_key(self, partition: str, first: int, last: int) -> str:
        """The key of the object holding ``partition``'s records ``first`` to ``last``."""
        suffix = self.format + (".gz" if self.gzip else "")
        return f"{self.prefix}{sanitize(partition)}/{first:020d}-{last:020d}.{suffix}"

    async def open(self) -> None:
        """Open the S3 client."""
        if self._client is not None:
            await anyio.lowlevel.checkpoint()
            return
        stack = contextlib.AsyncExitStack()
        self._client = await open_client(stack, self.client_config, self.endpoint_url)
        self._stack = stack

    async def write(self, batch: Batch) -> None:
        """Write the batch as one object per source partition; return once all are stored.

        Raises:
            DataError: An item cannot be encoded; nothing of the batch is written.
            RuntimeError: An item's source position is unknown (it cannot be named).
            botocore.exceptions.ClientError: S3 refused a PUT (throttling and
                5xx are classified transient and retried by the sink policy).
            TimeoutError: A PUT took longer than ``client_config.call_timeout``.
        """
        if self._client is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        objects = [(key, self._encode(batch, items)) for key, items in self._parts(batch)]
        if not objects:
            await anyio.lowlevel.checkpoint()
        for key, body in objects:
            await call(self.client_config, self._client.put_object(**self._put_args(key, body)))
            self.objects_written += 1

    async def flush(self) -> None:
        """Nothing is buffered: every ``write`` is already stored."""
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the S3 client."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
        else:
            await anyio.lowlevel.checkpoint()

    def _parts(self, batch: Batch) -> list[tuple[str, list[int]]]:
        """``(key, item indexes)`` per source partition, in order of first appearance."""
        parts: dict[str, tuple[list[int], list[int]]] = {}
        for index in range(len(batch.items)):
            partition, offset = batch.position(index)
            if partition is None or offset is None:
                raise RuntimeError(
                    f"sink {self.name!r}: item {index} has no source position, so its "
                    "object cannot be named deterministically"
                )
            indexes, offsets = parts.setdefault(partition, ([], []))
            indexes.append(index)
            offsets.append(offset)
        return [
            (self.object_key(partition, min(offsets), max(offsets)), indexes)
            for partition, (indexes, offsets) in parts.items()
        ]

    def _encode(self, batch: Batch, indexes: list[int]) -> bytes:
        data = self._csv(batch, indexes) if self.format == "csv" else self._jsonl(batch, indexes)
        # mtime=0: the same records always make the same bytes (and ETag).
        return gzip_module.compress(data, mtime=0) if self.gzip else data

    def _jsonl(self, batch: Batch, indexes: list[int]) -> bytes:
        return encode_json_lines(batch, indexes, self._record_error)

    def _csv(self, batch: Batch, indexes: list[int]) -> bytes:
        text = io.StringIO()
        writer = csv.DictWriter(text, self.fieldnames, extrasaction="raise")
        writer.writeheader()
        for index in indexes:
            item = batch.items[index]
            if not isinstance(item, dict):
                problem = f"expected a dict, got {type(item).__name__}"
                raise self._record_error(batch, index, problem)
            try:
                writer.writerow(item)
            except ValueError as exc:
                raise self._record_error(batch, index, str(exc)) from None
        return text.getvalue().encode()

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
        }
        if self.sse is not None:
            args["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id is not None:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args

    def _record_error(self, batch: Batch, index: int, problem: str) -> DataError:
        partition, offset = batch.position(index)
        where = f"the record at {partition}@{offset}"
        return DataError(f"sink {self.name!r}: cannot write {where}: {problem}")
