"""Objects named by records: the step that reads S3 objects announced through a topic.

Spread over machines, the keys of new objects go through a Kafka topic (S3
event notifications, or a producer's own messages) that a consumer group
shares: Kafka gives each member its partitions, so each object is read by the
one member that reads its key, and a member that dies hands its partitions
(and so its objects) to the others. No lease protocol of riprap's own.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, final
from urllib.parse import unquote_plus

import anyio
import orjson

from riprap import ConfigError, DataError

from ._client import S3ClientConfig, check_bucket, client_error_types, is_missing, open_client
from ._formats import (
    DEFAULT_MAX_OBJECT_BYTES,
    CorruptObjectError,
    Format,
    ObjectTooLargeError,
    check_max_object_bytes,
    decode_object,
)
from ._reads import download

if TYPE_CHECKING:
    from collections.abc import Callable


@final
class S3ObjectReader:
    """Reads the S3 objects a record names: a step function for ``.flat_map``.

    ``.flat_map("read", S3ObjectReader(bucket), concurrency=4)`` replaces each
    record naming objects with the objects' records (raw JSON Lines, or CSV
    rows as dicts, as :class:`S3Source` reads them). They all go on behind the
    record that named them, so a crash before they are written reads the whole
    object again (an idempotent sink keeps one copy). The runtime closes the
    client at the end of the run (``aclose``).

    Args:
        bucket: The bucket the objects are in.
        key: ``key(value)``: the object key, or a list of keys. By default the
            value itself (a ``str``, or UTF-8 bytes), a mapping's ``"key"``,
            or every object of an S3 event notification (``{"Records":
            [{"s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]}``,
            keys URL-decoded; a notification about another bucket is a data
            error, reason ``other_bucket``).
        format: ``"jsonl"`` or ``"csv"``.
        gzip: Decompress: ``None`` decides by the ``.gz`` suffix.
        encoding: CSV text encoding.
        delimiter: CSV field delimiter.
        endpoint_url: An S3-compatible endpoint instead of AWS.
        client_config: Timeouts, retries and client options.
        max_object_bytes: The largest object read, as stored and once
            decompressed (each is held in memory while it is read).

    A record naming no key (reason ``no_object_key``), an object that does
    not exist (``missing_object``), is larger than ``max_object_bytes``
    (``object_too_large``: its body is not read) or cannot be read as a
    whole (``corrupt_object``) is dead-lettered; other S3 errors go to the
    step's policies (retried, then the run stops).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        bucket: str,
        *,
        key: Callable[[Any], str | list[str]] | None = None,
        format: Format = "jsonl",
        gzip: bool | None = None,
        encoding: str = "utf-8",
        delimiter: str = ",",
        endpoint_url: str | None = None,
        client_config: S3ClientConfig | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ) -> None:
        if format not in ("jsonl", "csv"):
            raise ConfigError("format", f"expected 'jsonl' or 'csv', not {format!r}")
        self.max_object_bytes = check_max_object_bytes("S3ObjectReader", max_object_bytes)
        self.bucket = check_bucket("S3ObjectReader", bucket)
        self.key = key
        self.format: Format = format
        self.gzip = gzip
        self.encoding = encoding
        self.delimiter = delimiter
        self.endpoint_url = endpoint_url
        self.client_config = client_config or S3ClientConfig()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._lock = anyio.Lock()

    async def __call__(self, value: Any) -> list[Any]:
        """The records of every object ``value`` names, in order.

        Raises:
            DataError: No key, a missing object or a corrupt one (see above).
        """
        client = self._client or await self._open()
        records: list[Any] = []
        for key in self._keys(value):
            try:
                data, _ = await download(
                    self.client_config, client, self.bucket, key, max_bytes=self.max_object_bytes
                )
            except ObjectTooLargeError as exc:
                raise DataError(
                    f"s3://{self.bucket}/{key} is not read: {exc}", reason="object_too_large"
                ) from None
            except client_error_types() as exc:
                if is_missing(exc):
                    raise DataError(
                        f"s3://{self.bucket}/{key} does not exist", reason="missing_object"
                    ) from None
                raise
            try:
                values, _, _ = decode_object(
                    key,
                    data,
                    format=self.format,
                    gzip=self.gzip,
                    encoding=self.encoding,
                    delimiter=self.delimiter,
                    limit=self.max_object_bytes,
                )
            except ObjectTooLargeError as exc:
                raise DataError(
                    f"s3://{self.bucket}/{key} is not read: {exc}", reason="object_too_large"
                ) from None
            except CorruptObjectError as exc:
                raise DataError(
                    f"s3://{self.bucket}/{key} cannot be read: {exc}", reason="corrupt_object"
                ) from None
            records.extend(values)
        return records

    async def aclose(self) -> None:
        """Close the client (the runtime calls it when the run ends)."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _open(self) -> Any:
        async with self._lock:
            if self._client is None:
                stack = contextlib.AsyncExitStack()
                self._client = await open_client(stack, self.client_config, self.endpoint_url)
                self._stack = stack
        return self._client

    def _keys(self, value: Any) -> list[str]:
        """The object keys ``value`` names.

        Raises:
            DataError: It names none, or a notification is about another bucket.
        """
        found: Any = self.key(value) if self.key is not None else _default_keys(value, self.bucket)
        keys = [found] if isinstance(found, str) else found
        if (
            not isinstance(keys, list)
            or not keys
            or not all(isinstance(k, str) and k for k in keys)
        ):
            raise DataError(f"no object key in {value!r:.80}", reason="no_object_key")
        return keys


def _default_keys(value: Any, bucket: str) -> Any:
    """The keys of a str, UTF-8 bytes, a mapping's ``"key"`` or an S3 event notification."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
        value = _json(text) if text.lstrip().startswith("{") else text
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    if "Records" not in value:
        return value.get("key")
    keys = []
    for record in value["Records"] if isinstance(value["Records"], list) else ():
        s3 = record.get("s3", {}) if isinstance(record, dict) else {}
        named = s3.get("bucket", {}).get("name")
        if named != bucket:
            raise DataError(
                f"notification about bucket {named!r}, not {bucket!r}", reason="other_bucket"
            )
        keys.append(unquote_plus(str(s3.get("object", {}).get("key", ""))))
    return keys


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise DataError(f"not JSON: {text!r:.80}", reason="no_object_key") from None
