"""Reading a whole object as records: JSON Lines (raw lines) or CSV, gzip or not.

Shared by :class:`~riprap.connectors.s3.S3Source` and
:class:`~riprap.connectors.s3.S3ObjectReader`, so an object reads the same
whichever way it is found.
"""

from __future__ import annotations

import codecs
import csv
import gzip as gzip_module
import io
import zlib
from typing import Any, Literal, final

Format = Literal["jsonl", "csv"]


@final
class CorruptObjectError(Exception):
    """An object cannot be read as a whole (bad or truncated gzip, bytes that are not text,
    CSV rows that do not fit the header)."""


def decode_object(
    key: str, data: bytes, *, format: Format, gzip: bool | None, encoding: str, delimiter: str
) -> tuple[list[Any], list[int], int]:
    """``(values, line offsets, line count)`` of a whole object.

    Raises:
        CorruptObjectError: The object cannot be read as a whole.
    """
    if gzip or (gzip is None and key.endswith(".gz")):
        try:
            data = gzip_module.decompress(data)
        except EOFError:
            raise CorruptObjectError("truncated gzip stream") from None
        except (OSError, zlib.error) as exc:
            raise CorruptObjectError(f"not a valid gzip stream: {exc}") from None
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
