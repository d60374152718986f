"""Reading a whole object as records: JSON Lines (raw lines) or CSV, gzip or not.

Shared by :class:`~riprap.connectors.s3.S3Source` and
:class:`~riprap.connectors.s3.S3ObjectReader`, so an object reads the same
whichever way it is found.
"""

from __future__ import annotations

import codecs
import csv
import io
import zlib
from typing import Any, Literal, final

from riprap import ConfigError

Format = Literal["jsonl", "csv"]

DEFAULT_MAX_OBJECT_BYTES = 256 * 1024 * 1024
"""The largest object the S3 readers hold, as stored and once decompressed (256 MiB)."""

COPY_LIMIT = 5 * 1024**3
"""The largest object S3 copies in one ``CopyObject`` call (5 GiB)."""


class CorruptObjectError(Exception):
    """An object cannot be read as a whole (bad or truncated gzip, bytes that are not text,
    CSV rows that do not fit the header, more bytes than the reader holds)."""


@final
class ObjectTooLargeError(CorruptObjectError):
    """An object is larger than ``max_object_bytes``, as stored or once decompressed.

    ``size`` is its stored size when that is what is over the limit, else ``None``.
    """

    def __init__(self, reason: str, size: int | None = None) -> None:
        super().__init__(reason)
        self.size = size


def check_max_object_bytes(owner: str, value: int) -> int:
    """``value`` if it is a positive int.

    Raises:
        ConfigError: It is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            "max_object_bytes", f"{owner}: must be a positive number of bytes, got {value!r}"
        )
    return value


def too_large(size: int, limit: int) -> str:
    """Why an object of ``size`` bytes is refused."""
    return f"{size} bytes, over max_object_bytes ({limit}); raise it to read the object"


def decode_object(
    key: str,
    data: bytes,
    *,
    format: Format,
    gzip: bool | None,
    encoding: str,
    delimiter: str,
    limit: int = DEFAULT_MAX_OBJECT_BYTES,
) -> tuple[list[Any], list[int], int]:
    """``(values, line offsets, line count)`` of a whole object of at most ``limit`` bytes.

    Raises:
        ObjectTooLargeError: The object holds more than ``limit`` bytes, as
            stored or once decompressed (decompression stops there).
        CorruptObjectError: The object cannot be read as a whole.
    """
    return decode_bytes(
        object_bytes(key, data, gzip=gzip, limit=limit),
        format=format,
        encoding=encoding,
        delimiter=delimiter,
    )


def object_bytes(key: str, data: bytes, *, gzip: bool | None, limit: int) -> bytes:
    """An object's content: ``data`` decompressed when it is gzip, at most ``limit`` bytes.

    Raises:
        ObjectTooLargeError: The object holds more than ``limit`` bytes, as
            stored or once decompressed (decompression stops there).
        CorruptObjectError: It is not valid gzip.
    """
    if len(data) > limit:
        raise ObjectTooLargeError(too_large(len(data), limit), len(data))
    if gzip or (gzip is None and key.endswith(".gz")):
        data = _gunzip(data, limit)
    return data


def decode_bytes(
    data: bytes, *, format: Format, encoding: str, delimiter: str
) -> tuple[list[Any], list[int], int]:
    """``(values, line offsets, line count)`` of an object's content (see :func:`object_bytes`).

    Raises:
        CorruptObjectError: The content cannot be read as a whole.
    """
    if format == "csv":
        return _decode_csv(data, encoding, delimiter)
    return _decode_lines(data)


def _decode_csv(data: bytes, encoding: str, delimiter: str) -> tuple[list[Any], list[int], int]:
    utf8 = codecs.lookup(encoding).name == "utf-8"
    try:  # a UTF-8 byte order mark must not rename the first column
        text = data.decode("utf-8-sig" if utf8 else encoding)
    except UnicodeDecodeError as exc:
        raise CorruptObjectError(f"not valid {encoding} text: {exc.reason}") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    values: list[Any] = []
    offsets: list[int] = []
    try:
        header = next(reader, [])
        while True:
            offset = reader.line_num
            row = next(reader, None)
            if row is None:
                break
            if not row:
                continue
            if len(row) != len(header):
                raise CorruptObjectError(
                    f"line {offset + 1}: expected {len(header)} fields (the header's), "
                    f"got {len(row)}"
                )
            values.append(dict(zip(header, row, strict=True)))
            offsets.append(offset)
    except csv.Error as exc:
        raise CorruptObjectError(f"malformed CSV after line {reader.line_num}: {exc}") from None
    return values, offsets, reader.line_num


def _decode_lines(data: bytes) -> tuple[list[Any], list[int], int]:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptObjectError(f"not valid UTF-8 at byte {exc.start}: {exc.reason}") from None
    lines = data.splitlines()  # LF, CRLF or a lone CR ends a line
    if lines:
        lines[0] = lines[0].removeprefix(codecs.BOM_UTF8)
    values: list[Any] = []
    offsets: list[int] = []
    for offset, line in enumerate(lines):
        if line:
            values.append(line)
            offsets.append(offset)
    return values, offsets, len(lines)


def _gunzip(data: bytes, limit: int) -> bytes:
    """The gzip members of ``data`` decompressed, stopping once they pass ``limit`` bytes.

    A few MiB of gzip can hold gigabytes (a decompression bomb), so the
    output is bounded while it is produced, not checked afterwards.

    Raises:
        ObjectTooLargeError: More than ``limit`` bytes once decompressed.
        CorruptObjectError: Not gzip, a failed check, or a truncated stream.
    """
    members: list[bytes] = []
    size = 0
    rest = data
    while rest:
        member = zlib.decompressobj(wbits=31)  # a gzip header and trailer, both checked
        try:
            out = member.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise CorruptObjectError(f"not a valid gzip stream: {exc}") from None
        size += len(out)
        if size > limit:
            raise ObjectTooLargeError(
                f"more than {limit} bytes once decompressed, over max_object_bytes; "
                "raise it to read the object"
            )
        if not member.eof:
            raise CorruptObjectError("truncated gzip stream")
        members.append(out)
        rest = member.unused_data.lstrip(b"\x00")  # members may be padded with zeros
    return b"".join(members)
