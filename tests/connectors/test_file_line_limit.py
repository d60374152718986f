"""``max_line_bytes`` of the file sources: a line is never held whole past the limit.

A file that is not JSON Lines at all (a JSON array exported on one line, a
binary file) would otherwise be read into memory as one record. The
over-long line is handed over as its first 1,024 bytes with a
``line_too_long`` ``DecodeError``, and every other line, position and error
is as without the limit: checked against ``bytes.splitlines`` on random files.
A CSV row with such a line is dead-lettered whole, however its quotes run.
"""

from __future__ import annotations

import csv
import random
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
from riprap import ConfigError, SourceBatch
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.files import CsvSource, JsonLinesSource
from riprap.connectors.memory import MemorySink
from riprap.deadletters import SqliteDeadLetters, read_dead_letters
from tests._sources import read_to_end, read_to_end_traced

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

KEPT = 1024
"""Bytes of an over-long line handed over."""
BOM = b"\xef\xbb\xbf"

Read = tuple[list[Any], list[int], dict[int, tuple[str, str]]]
"""Values, offsets, and (reason, message) by offset."""


def random_file(rng: random.Random, limit: int) -> bytes:
    """Lines of random lengths around and far over ``limit``, mixed endings, empty lines."""
    lines = []
    for _ in range(rng.randrange(1, 60)):
        length = rng.choice(
            [0, rng.randrange(1, 50), rng.randrange(limit - 3, limit + 3), rng.randrange(limit * 5)]
        )
        lines.append(bytes(rng.choice(b"abc{}: ") for _ in range(length)))
    endings = [rng.choice([b"\n", b"\r\n", b"\r"]) for _ in lines]
    data = b"".join(line + ending for line, ending in zip(lines, endings, strict=True))
    if rng.random() < 0.3:
        data = data.rstrip(b"\r\n")  # the last line without an ending
    if rng.random() < 0.3:
        data = BOM + data
    return data


def expected(data: bytes, limit: int, start: int = 0) -> Read:
    """What the source should hand over from line ``start`` on, by ``bytes.splitlines``."""
    values, offsets, errors = [], [], {}
    for offset, line in enumerate(data.splitlines()):
        if offset == 0 and len(line) <= limit:
            line = line.removeprefix(BOM)
        if offset < start or not line:
            continue
        if len(line) > limit:
            errors[offset] = ("line_too_long", f"the line is {len(line)} bytes")
            line = line[:KEPT]
        values.append(line)
        offsets.append(offset)
    return values, offsets, errors


def flattened(batches: list[SourceBatch]) -> Read:
    """The values, offsets and errors of ``batches`` as one run."""
    values: list[Any] = []
    offsets: list[int] = []
    errors: dict[int, tuple[str, str]] = {}
    for batch in batches:
        at = [batch.offset_of(i) for i in range(len(batch.values))]
        for i, error in (batch.errors or {}).items():
            errors[at[i]] = (error.reason, _head(str(error)))
        values.extend(batch.values)
        offsets.extend(at)
    return values, offsets, errors


def _head(message: str) -> str:
    """``the line is N bytes`` out of a ``path:line: ...`` message."""
    text = message.partition(": ")[2]
    return text.partition(", ")[0]


@pytest.mark.parametrize("seed", range(40))
async def test_lines_read_as_splitlines_reads_them_cut_at_the_limit(
    tmp_path: Path, seed: int
) -> None:
    """Random files, limits and batch sizes, from the start and from a position: every line
    as ``bytes.splitlines`` gives it, and each one over the limit cut with its error.
    """
    rng = random.Random(seed)
    limit = rng.randrange(KEPT, 4 * KEPT)
    data = random_file(rng, limit)
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    size = rng.choice([1, 3, 100])
    start = rng.randrange(len(data.splitlines()) + 1)
    read = flattened(await read_to_end(JsonLinesSource(path, max_line_bytes=limit), size))
    resumed = flattened(
        await read_to_end(
            JsonLinesSource(path, max_line_bytes=limit), size, positions={str(path): start}
        )
    )
    assert (expected(data, limit), expected(data, limit, start)) == (read, resumed)


def one_line_file(path: Path, head: bytes, tail: bytes) -> int:
    """``head``, then 64 MiB of a JSON array on one line, then ``tail``; the long line's length."""
    block = b'{"n": 1}, ' * 100_000
    with path.open("wb") as file:
        file.write(head + b"[")
        while file.tell() < 64 * 1024 * 1024:
            file.write(block)
        file.write(b"]\n" + tail)
    return path.stat().st_size - len(head) - len(b"\n" + tail)


async def held_while_reading(source: JsonLinesSource | CsvSource) -> tuple[Read, int]:
    """What ``source`` hands over, and the most memory allocated while it read."""
    batches, peak = await read_to_end_traced(source)
    return flattened(batches), peak


async def test_a_file_on_one_line_is_never_held_whole(tmp_path: Path) -> None:
    """64 MiB without a line break, then a good line: each source holds about the limit, not
    the 64 MiB, and reads the good line after it.
    """
    limit = 1024 * 1024
    length = one_line_file(tmp_path / "array.json", b"", b'{"n": 2}\n')
    lines, peak = await held_while_reading(
        JsonLinesSource(tmp_path / "array.json", max_line_bytes=limit)
    )
    assert peak < 8 * limit
    assert (
        [(b"[" + b'{"n": 1}, ' * 103)[:KEPT], b'{"n": 2}'],
        [0, 1],
        {0: ("line_too_long", f"the line is {length} bytes")},
    ) == lines
    length = one_line_file(tmp_path / "array.csv", b"n\n", b"2\n")
    rows, peak = await held_while_reading(CsvSource(tmp_path / "array.csv", max_line_bytes=limit))
    assert peak < 8 * limit
    assert (
        [(b"[" + b'{"n": 1}, ' * 103)[:KEPT], {"n": "2"}],
        [1, 2],
        {1: ("line_too_long", f"a line of {length} bytes")},
    ) == rows


async def test_the_over_long_line_is_dead_lettered_by_file_and_line(tmp_path: Path) -> None:
    """Decoded, the run dead-letters the over-long line (reason ``line_too_long``, its file,
    line and length) and writes the lines around it.
    """
    path = tmp_path / "in.jsonl"
    long_line = orjson.dumps({"blob": "x" * 5000})
    path.write_bytes(b'{"n": 1}\n' + long_line + b'\n{"n": 3}\n')
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "lines",
            checkpoint=MemoryCheckpoints(),
            dead_letter=SqliteDeadLetters(tmp_path / "dlq.db"),
        )
        .source(JsonLinesSource(path, decode=True, max_line_bytes=KEPT * 2))
        .sink(sink)
    )
    report = await pipeline.run()
    letters = list(read_dead_letters(tmp_path / "dlq.db"))
    assert ([{"n": 1}, {"n": 3}], {"line_too_long": 1}) == (sink.values, dict(report.dead_lettered))
    assert [("line_too_long", long_line[:KEPT])] == [
        (letter.reason, letter.original_value()) for letter in letters
    ]
    assert (
        f"{path}:2: the line is {len(long_line)} bytes, over max_line_bytes ({KEPT * 2}); "
        f"its first {KEPT} bytes are kept"
    ) == letters[0].message


@pytest.mark.parametrize("value", [KEPT - 1, 0, True, 2.0, "1MiB"])
def test_max_line_bytes_must_be_a_whole_number_of_at_least_the_kept_bytes(value: Any) -> None:
    """A limit below 1,024 bytes, or not an int, is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match="max_line_bytes"):
        JsonLinesSource("in.jsonl", max_line_bytes=value)
    with pytest.raises(ConfigError, match="max_line_bytes"):
        CsvSource("in.csv", max_line_bytes=value)


LONG = 5_000
"""Bytes of the over-long CSV lines below (the limit is 2,048)."""


async def read_csv(tmp_path: Path, data: bytes, start: int = 0) -> Read:
    """What a CsvSource with a 2,048-byte limit hands over of ``data``, from line ``start``."""
    return await read_csv_with(tmp_path, data, start, max_line_bytes=2 * KEPT)


async def read_csv_with(tmp_path: Path, data: bytes, start: int = 0, **options: Any) -> Read:
    """What a CsvSource with ``options`` hands over of ``data``, from line ``start``."""
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    source = CsvSource(path, **options)
    return flattened(await read_to_end(source, 2, positions={str(path): start} if start else None))


async def test_a_csv_row_with_an_over_long_line_is_set_aside_and_the_rest_read(
    tmp_path: Path,
) -> None:
    """An over-long row, and a quoted field whose second line is over-long, are each one
    ``line_too_long`` record of their first bytes; the rows after them keep their positions,
    from the start and on resume.
    """
    long_row = b"1," + b"x" * LONG + b"\n"
    quoted = b'2,"starts here\n' + b"y" * LONG + b'\nends here"\n'
    data = b"id,text\n" + long_row + b"3,fine\n" + quoted + b"4,also fine\n"
    values, offsets, errors = await read_csv(tmp_path, data)
    assert [
        long_row[:KEPT],
        {"id": "3", "text": "fine"},
        b'2,"starts here\n' + b"y" * KEPT + b'\nends here"',
        {"id": "4", "text": "also fine"},
    ] == values
    assert [1, 2, 3, 6] == offsets
    assert {
        1: ("line_too_long", f"a line of {len(long_row) - 1} bytes"),
        3: ("line_too_long", f"a line of {LONG} bytes"),
    } == errors
    assert ([{"id": "4", "text": "also fine"}], [6]) == (await read_csv(tmp_path, data, 6))[:2]


async def test_a_csv_file_whose_header_is_over_long_is_set_aside_whole(tmp_path: Path) -> None:
    """A header over the limit sets the file aside, as a header that cannot be read does."""
    values, offsets, errors = await read_csv(tmp_path, b"a" * LONG + b"\n1\n2\n")
    assert ([b"a" * KEPT], [0]) == (values, offsets)
    assert {0: ("line_too_long", f"the header is a line of {LONG} bytes")} == errors


async def test_csv_fields_longer_than_the_csv_modules_default_are_read(tmp_path: Path) -> None:
    """A 200 KB field on one line and one quoted over several lines, both under the line
    limit, are read whole (the ``csv`` module alone stops at 131,072 characters a field).
    """
    wide, tall = "x" * 200_000, "a\n" + "y" * 200_000 + "\nb"
    data = f'id,text\n1,{wide}\n2,"{tall}"\n3,fine\n'.encode()
    values, offsets, errors = await read_csv_with(tmp_path, data)
    expected = [{"id": "1", "text": wide}, {"id": "2", "text": tall}, {"id": "3", "text": "fine"}]
    assert (expected, [1, 2, 5], {}) == (values, offsets, errors)


async def test_a_csv_field_past_the_field_limit_sets_the_rest_of_the_file_aside(
    tmp_path: Path,
) -> None:
    """A quoted field over the field limit, in lines each under the line limit: where its row
    ends cannot be told, so its first line stands for the rest of the file (reason
    ``field_too_long``) and none of the field's lines is read as a row.
    """
    field = "\n".join(["z" * 50_000] * 4)  # 200,003 characters, lines of 50,000 bytes
    data = f'id,text\n1,ok\n2,"{field}"\n3,"looks like, a row"\n4,fine\n'.encode()
    limit = csv.field_size_limit(131_072)  # a test before may have raised it
    try:
        values, offsets, errors = await read_csv_with(tmp_path, data, max_line_bytes=65_536)
    finally:
        csv.field_size_limit(limit)
    assert ([{"id": "1", "text": "ok"}, b'2,"' + b"z" * 50_000], [1, 2]) == (values, offsets)
    assert {2: ("field_too_long", "a field passes the CSV field limit (131072 characters; ")} == {
        offset: (reason, message[: len("a field passes the CSV field limit (131072 characters; ")])
        for offset, (reason, message) in errors.items()
    }


async def test_a_cr_cr_lf_run_cut_by_a_read_ends_two_lines(tmp_path: Path) -> None:
    """CR, CR, LF with the read cut after the first CR is two line ends, as ``splitlines``
    says, not three: the lines after keep their positions (the read size is the limit).
    """
    jsonl = b"a" * (KEPT - 1) + b"\r\r\n" + b'"b"\n'
    assert [0, 2] == (await read_lines(tmp_path, jsonl))[1]
    csv_data = b"h\n" + b"a" * (KEPT - 3) + b"\r\r\n" + b"b\n"
    assert ([{"h": "a" * (KEPT - 3)}, {"h": "b"}], [1, 3]) == (
        await read_csv_with(tmp_path, csv_data, max_line_bytes=KEPT)
    )[:2]


async def read_lines(tmp_path: Path, data: bytes) -> Read:
    """What a JsonLinesSource with the smallest limit hands over of ``data``."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    return flattened(await read_to_end(JsonLinesSource(path, max_line_bytes=KEPT), 10))
