"""Where lake files go: a local directory or an S3 prefix, behind one blocking interface.

Every method blocks (file system or network I/O): callers run them in a worker
thread. Local files are written durably (temp file, fsync, rename, fsync of the
directory), so a file either exists whole under its final name or not at all;
an S3 object appears whole when its upload completes.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, TypeAlias, final

import pyarrow as pa
import pyarrow.fs as pafs

from riprap import ConfigError
from riprap.lowlevel import fsync_directory, make_directory

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

Writable: TypeAlias = BinaryIO | pa.NativeFile
"""What a ``fill`` writes to: an Arrow file, or a memory buffer on the way to S3."""

_TEMP = ".tmp-"
"""Prefix of a local file being written; listings skip such files."""


@final
@dataclass(frozen=True, slots=True)
class LakeS3Options:
    """How to reach S3 (or an S3-compatible store) for ``s3://`` locations.

    Credentials left ``None`` come from the environment (the usual AWS chain).

    Attributes:
        region: The bucket's region.
        endpoint_url: A non-AWS endpoint such as ``http://127.0.0.1:9000``.
        access_key_id: The access key (``None``: from the environment).
        secret_access_key: The secret key (never shown in a ``repr``).
        request_timeout: Seconds one request may take.

    .. versionadded:: 0.1
    """

    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    request_timeout: float = 30.0

    def filesystem(self) -> pafs.S3FileSystem:
        """A pyarrow S3 file system with these options."""
        options: dict[str, object] = {
            "region": self.region,
            "request_timeout": self.request_timeout,
            "connect_timeout": self.request_timeout,
        }
        if self.endpoint_url is not None:
            scheme, _, host = self.endpoint_url.partition("://")
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        if self.access_key_id is not None:
            options.update(access_key=self.access_key_id, secret_key=self.secret_access_key)
        return pafs.S3FileSystem(**options)

    def delta_storage_options(self) -> dict[str, str]:
        """The same options in the form the Delta Lake library takes them."""
        options = {
            "AWS_REGION": self.region,
            # Commits use conditional PUT (If-None-Match): no external lock needed.
            "AWS_CONDITIONAL_PUT": "etag",
            "timeout": f"{self.request_timeout}s",
        }
        if self.endpoint_url is not None:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if self.access_key_id is not None:
            options["AWS_ACCESS_KEY_ID"] = self.access_key_id
            options["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key or ""
        return options


@final
class Storage:
    """Files under one root (a local directory or ``bucket/prefix``); every call blocks."""

    def __init__(self, root: str, filesystem: pafs.FileSystem, *, local: bool) -> None:
        self.root = root
        self.filesystem = filesystem
        self.local = local

    def path(self, *parts: str) -> str:
        """The full path of ``parts`` joined under the root (empty parts left out)."""
        return "/".join((self.root, *(part for part in parts if part)))

    def names(self, folder: str) -> list[str]:
        """The file names directly in ``folder`` (none if it does not exist), temp files skipped."""
        selector = pafs.FileSelector(self.path(folder), allow_not_found=True)
        infos = self.filesystem.get_file_info(selector)
        return [
            info.base_name
            for info in infos
            if info.type == pafs.FileType.File and not info.base_name.startswith(_TEMP)
        ]

    def files(self, suffix: str) -> list[str]:
        """Paths (relative to the root) of every file below it ending in ``suffix``, sorted."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        prefix = self.root + "/"
        return sorted(
            info.path.removeprefix(prefix)
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(suffix)
            and not info.base_name.startswith(_TEMP)
        )

    def open_input(self, relative: str) -> pa.NativeFile:
        """``relative`` opened for random access (as Parquet readers need)."""
        return self.filesystem.open_input_file(self.path(relative))

    def copy_to(self, relative: str, target: Storage, folder: str, name: str) -> None:
        """Copy ``relative`` to ``folder/name`` in ``target`` (streamed, not held in memory)."""
        if target.local:
            make_directory(target.path(folder))
        pafs.copy_files(
            self.path(relative),
            target.path(folder, name),
            source_filesystem=self.filesystem,
            destination_filesystem=target.filesystem,
        )

    def put(self, folder: str, name: str, data: bytes | memoryview) -> None:
        """Store ``data`` as ``folder/name``, whole or not at all, durably."""
        self.write(folder, name, lambda out: out.write(data))

    def write(self, folder: str, name: str, fill: Callable[[Writable], object]) -> int:
        """Store what ``fill(out)`` writes as ``folder/name``, whole or not at all; its size.

        A local file is filled under a temp name, fsynced and renamed, with no
        copy in memory; an S3 object is gathered in memory first and uploaded
        whole, so a ``fill`` that fails half-way never leaves a partial object.
        """
        if not self.local:
            buffer = io.BytesIO()
            fill(buffer)
            with self.filesystem.open_output_stream(self.path(folder, name)) as out:
                out.write(buffer.getbuffer())
            return buffer.tell()
        directory = self.path(folder)
        make_directory(directory)
        temp = os.path.join(directory, f"{_TEMP}{uuid.uuid4().hex}")
        try:
            # Arrow's own file, not Python's: its writes never wait for the interpreter lock.
            with pa.OSFile(temp, "wb") as out:
                fill(out)
                size = int(out.tell())
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, os.path.join(directory, name))
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        fsync_directory(directory)
        return size


def open_storage(location: str | os.PathLike[str], s3: LakeS3Options | None) -> Storage:
    """The storage of ``location``: ``s3://bucket/prefix`` or a local directory.

    Raises:
        ConfigError: An ``s3://`` location without a bucket.
    """
    text = os.fspath(location)
    if text.startswith("s3://"):
        root = text.removeprefix("s3://").strip("/")
        if not root:
            raise ConfigError("location", f"{text!r} names no bucket")
        return Storage(root, (s3 or LakeS3Options()).filesystem(), local=False)
    return Storage(os.path.abspath(text), pafs.LocalFileSystem(), local=True)


def table_uri(location: str | os.PathLike[str]) -> str:
    """The URI the Delta Lake library takes for ``location`` (absolute for a local path)."""
    text = os.fspath(location)
    return text if text.startswith("s3://") else os.path.abspath(text)


def storage_options(location: str, s3: LakeS3Options | None) -> Mapping[str, str] | None:
    """The Delta Lake storage options of ``location`` (``None`` for a local path)."""
    return (s3 or LakeS3Options()).delta_storage_options() if location.startswith("s3://") else None
