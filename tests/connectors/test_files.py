"""JSON Lines and CSV sources and sinks."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from riprap import (
    Batch,
    ConfigError,
    DataError,
    DecodeError,
    Sink,
    Source,
    SourceBatch,
    SourceContext,
)
from riprap.checkpoints import CheckpointError
from riprap.connectors.files import (
    CsvSink,
    CsvSource,
    JsonLinesSink,
    JsonLinesSource,
    encode_json,
    parse_json_batch,
    parse_json_line,
)
from riprap.lowlevel import Ack, SourceOrigin
from tests._sources import read_to_end

if TYPE_CHECKING:
    from pathlib import Path


def context(positions: dict[str, int] | None = None) -> SourceContext:
    return SourceContext(pipeline="test", positions=positions or {})


def offsets(batch: SourceBatch) -> list[int]:
    return [batch.offset_of(i) for i in range(len(batch))]


def batch_of(values: list[Any], partition: str = "in", start: int = 0) -> Batch:
    source = SourceBatch(partition, values, start=start)
    return Batch(list(values), Ack(lambda: None), SourceOrigin(source))


def write_lines(path: Path, lines: list[str], *, newline: str = "\n") -> str:
    path.write_text("".join(line + newline for line in lines))
    return str(path)


def json_lines(count: int) -> list[str]:
    return [orjson.dumps({"n": n}).decode() for n in range(count)]


def test_protocols(tmp_path: Path) -> None:
    """The sources and sinks satisfy the engine's protocols."""
    path = str(tmp_path / "f")
    assert all(isinstance(s, Source) for s in (JsonLinesSource(path), CsvSource(path)))
    assert all(isinstance(s, Sink) for s in (JsonLinesSink(path), CsvSink(path, ["a"])))


@pytest.mark.anyio
async def test_jsonl_raw_batches(tmp_path: Path) -> None:
    """Raw line bytes come in batches of at most max_records, positions = line indexes."""
    path = write_lines(tmp_path / "a.jsonl", json_lines(5))
    batches = await read_to_end(JsonLinesSource(path), max_records=2)
    expected = [
        ([b'{"n":0}', b'{"n":1}'], 0, 2),
        ([b'{"n":2}', b'{"n":3}'], 2, 4),
        ([b'{"n":4}'], 4, 5),
    ]
    assert expected == [(b.values, b.start, b.end) for b in batches]
    partitions = [path] * 3
    assert partitions == [b.partition for b in batches]


@pytest.mark.anyio
async def test_jsonl_decoded(tmp_path: Path) -> None:
    """With decode=True the values are parsed with orjson."""
    path = write_lines(tmp_path / "a.jsonl", json_lines(3))
    batches = await read_to_end(JsonLinesSource(path, decode=True))
    expected = [[{"n": 0}, {"n": 1}, {"n": 2}]]
    assert expected == [b.values for b in batches]


@pytest.mark.anyio
async def test_jsonl_empty_lines_are_counted_not_emitted(tmp_path: Path) -> None:
    """Empty lines produce no record but still occupy a position."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "", "2", "", "", "3", ""])
    batches = await read_to_end(JsonLinesSource(path, decode="json"), max_records=2)
    expected = [([1, 2], [0, 2], 3), ([3], [5], 7)]
    assert expected == [(b.values, offsets(b), b.end) for b in batches]


@pytest.mark.anyio
async def test_jsonl_crlf_and_last_line_without_newline(tmp_path: Path) -> None:
    """CRLF endings are removed and a last line without a newline is a record."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"1\r\n2\r\n3")
    batches = await read_to_end(JsonLinesSource(str(path)))
    expected = [([b"1", b"2", b"3"], 3)]
    assert expected == [(b.values, b.end) for b in batches]


def rejected(batch: SourceBatch) -> dict[int, tuple[Any, str]]:
    """The values a source could not decode, by offset: the raw value and the error message."""
    errors = batch.errors or {}
    return {batch.offset_of(i): (batch.values[i], str(e)) for i, e in errors.items()}


@pytest.mark.anyio
async def test_jsonl_malformed_line_is_handed_over_with_its_error(tmp_path: Path) -> None:
    """A bad line comes as its bytes with a DecodeError naming path:line; the file goes on."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "2", "{oops", "4"])
    batches = await read_to_end(JsonLinesSource(path, decode=True))
    expected = [([1, 2, b"{oops", 4], 4)]
    assert expected == [(b.values, b.end) for b in batches]
    [error] = (batches[0].errors or {}).values()
    message = f"{path}:3: invalid JSON at column 2: unexpected character, expected a string key"
    where = (DecodeError, path, 3, path, "decode_error", message)
    found = (type(error), *(getattr(error, name) for name in ("source", "line", "partition")))
    assert where == (*found, error.reason, str(error))


@pytest.mark.anyio
async def test_jsonl_malformed_line_after_a_resume(tmp_path: Path) -> None:
    """A bad line read after a resume names its true line number."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "[1,", "3"])
    [batch] = await read_to_end(JsonLinesSource(path, decode=True), positions={path: 1})
    assert [b"[1,", 3] == batch.values
    message = f"{path}:2: invalid JSON at column 4: unexpected end of data"
    assert {1: (b"[1,", message)} == rejected(batch)


@pytest.mark.anyio
async def test_jsonl_malformed_line_in_a_later_batch(tmp_path: Path) -> None:
    """A bad line's number counts the empty lines before it, across batches."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "2", "", "3", "", "x", "5"])
    batches = await read_to_end(JsonLinesSource(path, decode=True), max_records=2)
    expected = [([1, 2], 2, []), ([3, b"x"], 6, [5]), ([5], 7, [])]
    assert expected == [(b.values, b.end, list(rejected(b))) for b in batches]
    message = f"{path}:6: invalid JSON at column 1: unexpected character, expected a JSON value"
    assert {5: (b"x", message)} == rejected(batches[1])


@pytest.mark.anyio
async def test_parse_json_batch_names_file_and_line(tmp_path: Path) -> None:
    """A decoding stage over raw lines reports the bad line's file and 1-based line."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "", "2", "nope"])
    [raw] = await read_to_end(JsonLinesSource(path))
    batch = Batch(list(raw.values), Ack(lambda: None), SourceOrigin(raw))
    with pytest.raises(DecodeError, match=rf"^{path}:4: invalid JSON"):
        parse_json_batch(batch)
    expected = [1, 2]
    assert expected == parse_json_batch(batch_of([b"1", b"2"]))


def test_parse_json_line() -> None:
    """parse_json_line parses, or raises a DecodeError with source and line."""
    expected = {"a": 1}
    assert expected == parse_json_line(b'{"a": 1}')
    with pytest.raises(DecodeError, match=r"^in\.jsonl:7: invalid JSON at column 1"):
        parse_json_line(b"x", source="in.jsonl", line=7)


@pytest.mark.anyio
async def test_jsonl_glob_reads_files_in_sorted_order(tmp_path: Path) -> None:
    """A glob gives one partition per file, read one after another in sorted order."""
    second = write_lines(tmp_path / "b.jsonl", ["3"])
    first = write_lines(tmp_path / "a.jsonl", ["1", "2"])
    batches = await read_to_end(JsonLinesSource(str(tmp_path / "*.jsonl")))
    expected = [(first, [b"1", b"2"], 2), (second, [b"3"], 1)]
    assert expected == [(b.partition, b.values, b.end) for b in batches]


@pytest.mark.anyio
async def test_jsonl_resume_mid_file_and_across_files(tmp_path: Path) -> None:
    """Each file resumes at its own checkpoint; finished files yield nothing."""
    a = write_lines(tmp_path / "a.jsonl", ["1", "2"])
    b = write_lines(tmp_path / "b.jsonl", ["3", "4", "5", "6"])
    c = write_lines(tmp_path / "c.jsonl", ["7"])
    batches = await read_to_end(JsonLinesSource([c, b, a]), positions={a: 2, b: 1})
    expected = [(b, [b"4", b"5", b"6"], 1, 4), (c, [b"7"], 0, 1)]
    assert expected == [(x.partition, x.values, x.start, x.end) for x in batches]


@pytest.mark.anyio
async def test_jsonl_large_file_resume(tmp_path: Path) -> None:
    """Resuming near the end of a 100k-line file skips straight to the checkpoint."""
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(b"%d\n" % n for n in range(100_000)))
    batches = await read_to_end(
        JsonLinesSource(str(path), decode=True), positions={str(path): 99_995}
    )
    expected = [([99_995, 99_996, 99_997, 99_998, 99_999], 99_995, 100_000)]
    assert expected == [(b.values, b.start, b.end) for b in batches]


@pytest.mark.anyio
async def test_jsonl_checkpoint_past_end_is_an_error(tmp_path: Path) -> None:
    """A checkpoint beyond the end of a file means it was truncated: a clear error."""
    path = write_lines(tmp_path / "a.jsonl", ["1"])
    with pytest.raises(CheckpointError, match="resumes at line 5, but the file has only 1"):
        await read_to_end(JsonLinesSource(path), positions={path: 5})


@pytest.mark.anyio
async def test_missing_files_are_named(tmp_path: Path) -> None:
    """A missing path or a pattern that matches nothing fails on open, naming it."""
    missing, pattern = str(tmp_path / "nope.jsonl"), str(tmp_path / "*.csv")
    with pytest.raises(FileNotFoundError) as plain:
        await JsonLinesSource(missing).open(context())
    with pytest.raises(FileNotFoundError) as globbed:
        await CsvSource(pattern).open(context())
    expected = (missing, pattern)
    assert expected == (plain.value.filename, globbed.value.filename)


def test_bad_decode_option(tmp_path: Path) -> None:
    """An unknown decode option is a ConfigError naming it."""
    bad: Any = "yaml"
    with pytest.raises(ConfigError, match=r"^decode:"):
        JsonLinesSource(str(tmp_path), decode=bad)


@pytest.mark.anyio
async def test_csv_rows_and_positions(tmp_path: Path) -> None:
    """The header is line 0 and not a record; rows are dicts at their line index."""
    path = write_lines(tmp_path / "a.csv", ["id,name", "1,a", "", "2,b", "3,c"])
    batches = await read_to_end(CsvSource(path), max_records=2)
    expected = [
        ([{"id": "1", "name": "a"}, {"id": "2", "name": "b"}], [1, 3], 4),
        ([{"id": "3", "name": "c"}], [4], 5),
    ]
    assert expected == [(b.values, offsets(b), b.end) for b in batches]


@pytest.mark.anyio
async def test_csv_multiline_row_spans_positions(tmp_path: Path) -> None:
    """A quoted field with a newline makes its row cover two lines."""
    path = write_lines(tmp_path / "a.csv", ["k,v", '1,"two', 'lines"', "2,x"])
    batches = await read_to_end(CsvSource(path))
    values = [{"k": "1", "v": "two\nlines"}, {"k": "2", "v": "x"}]
    expected = [(values, [1, 3], 4)]
    assert expected == [(b.values, offsets(b), b.end) for b in batches]


@pytest.mark.anyio
async def test_csv_resume_rereads_header(tmp_path: Path) -> None:
    """A resumed file reads its header again, then skips to the checkpoint."""
    path = write_lines(tmp_path / "a.csv", ["a;b", "1;2", "3;4", "5;6"], newline="\r\n")
    batches = await read_to_end(CsvSource(path, delimiter=";"), positions={path: 2})
    expected = [([{"a": "3", "b": "4"}, {"a": "5", "b": "6"}], 2, 4)]
    assert expected == [(b.values, b.start, b.end) for b in batches]


@pytest.mark.anyio
async def test_csv_ragged_row_is_handed_over_with_its_error(tmp_path: Path) -> None:
    """A row with the wrong field count comes as its bytes with a DecodeError; the file goes on."""
    path = write_lines(tmp_path / "a.csv", ["a,b", "1,2", "3", "5,6"])
    [batch] = await read_to_end(CsvSource(path))
    expected = [{"a": "1", "b": "2"}, b"3", {"a": "5", "b": "6"}]
    assert expected == batch.values
    problem = f"{path}:3: expected 2 fields (the header's), got 1"
    assert {2: (b"3", problem)} == rejected(batch)


@pytest.mark.anyio
async def test_csv_undecodable_text(tmp_path: Path) -> None:
    """A line that is not valid text in the file's encoding is rejected with its true line."""
    path = tmp_path / "a.csv"
    path.write_bytes(b"a\nok\n\xff\nfine\n")
    [batch] = await read_to_end(CsvSource(str(path)))
    assert [{"a": "ok"}, b"\xff", {"a": "fine"}] == batch.values
    problem = f"{path}:3: not valid utf-8 text at byte 0: invalid start byte"
    assert {2: (b"\xff", problem)} == rejected(batch)


@pytest.mark.anyio
async def test_csv_empty_file(tmp_path: Path) -> None:
    """An empty file has no header and no records."""
    path = tmp_path / "a.csv"
    path.write_text("")
    expected: list[SourceBatch] = []
    assert expected == await read_to_end(CsvSource(str(path)))


@pytest.mark.anyio
async def test_jsonl_sink_appends_durably(tmp_path: Path) -> None:
    """Each write is on disk when it returns; bytes are written verbatim."""
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path)
    await sink.open()
    await sink.write(batch_of([{"a": 1}, [2]]))
    after_first = path.read_bytes()
    await sink.write(batch_of([b'{"raw":true}', "s"]))
    await sink.flush()
    await sink.aclose()
    expected = b'{"a":1}\n[2]\n'
    assert expected == after_first
    expected = b'{"a":1}\n[2]\n{"raw":true}\n"s"\n'
    assert expected == path.read_bytes()


@pytest.mark.anyio
async def test_jsonl_sink_is_at_least_once(tmp_path: Path) -> None:
    """A replayed batch is appended again: the sink is not idempotent."""
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path)
    await sink.open()
    batch = batch_of([1])
    await sink.write(batch)
    await sink.write(batch)
    await sink.aclose()
    expected = (False, b"1\n1\n")
    assert expected == (sink.idempotent, path.read_bytes())


@pytest.mark.anyio
async def test_jsonl_sink_rejects_unserialisable_batch(tmp_path: Path) -> None:
    """An unserialisable value is a DataError naming the file and record; nothing is written."""
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path)
    await sink.open()
    try:
        with pytest.raises(DataError, match=rf"^{path}: cannot write the record at in@4: not JSON"):
            await sink.write(batch_of([1, object()], start=3))
    finally:
        await sink.aclose()
    expected = b""
    assert expected == path.read_bytes()


@pytest.mark.anyio
async def test_jsonl_sink_ends_a_torn_last_line(tmp_path: Path) -> None:
    """A fragment left by a crash is ended, so the next record gets its own line."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'1\n{"tor')
    sink = JsonLinesSink(path)
    await sink.open()
    await sink.write(batch_of([2]))
    await sink.aclose()
    expected = b'1\n{"tor\n2\n'
    assert expected == path.read_bytes()


@pytest.mark.anyio
async def test_sink_write_before_open(tmp_path: Path) -> None:
    """Writing to a sink that is not open is an error naming the path."""
    path = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="is not open"):
        await JsonLinesSink(path).write(batch_of([1]))


@pytest.mark.anyio
async def test_csv_sink_round_trip(tmp_path: Path) -> None:
    """The header is written once; reopening appends rows a CsvSource reads back."""
    path = tmp_path / "out.csv"
    for rows in ([{"id": 1, "name": "a"}], [{"id": 2}]):
        sink = CsvSink(path, ["id", "name"])
        await sink.open()
        await sink.write(batch_of(rows))
        await sink.aclose()
    written = b"id,name\r\n1,a\r\n2,\r\n"
    assert written == path.read_bytes()
    batches = await read_to_end(CsvSource(str(path)))
    expected = [[{"id": "1", "name": "a"}, {"id": "2", "name": ""}]]
    assert expected == [b.values for b in batches]


@pytest.mark.anyio
async def test_csv_sink_header_mismatch(tmp_path: Path) -> None:
    """Appending to a file with another header is a ConfigError."""
    path = write_lines(tmp_path / "out.csv", ["x,y"])
    with pytest.raises(ConfigError, match=r"has the header \['x', 'y'\]"):
        await CsvSink(path, ["a"]).open()


@pytest.mark.anyio
async def test_csv_sink_rejects_unknown_field(tmp_path: Path) -> None:
    """A field outside fieldnames is a DataError; nothing of the batch is written."""
    path = tmp_path / "out.csv"
    sink = CsvSink(path, ["a"])
    await sink.open()
    try:
        with pytest.raises(DataError, match="record at in@1: dict contains fields not in"):
            await sink.write(batch_of([{"a": 1}, {"a": 2, "b": 3}]))
    finally:
        await sink.aclose()
    expected = b"a\r\n"
    assert expected == path.read_bytes()


@pytest.mark.anyio
async def test_jsonl_bom_is_skipped(tmp_path: Path) -> None:
    """A UTF-8 byte order mark at the start of a file is not part of the first record."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"n": 1}\n{"n": 2}\n')
    raw = await read_to_end(JsonLinesSource(str(path)))
    decoded = await read_to_end(JsonLinesSource(str(path), decode=True))
    expected = ([b'{"n": 1}', b'{"n": 2}'], [{"n": 1}, {"n": 2}], None)
    assert expected == (raw[0].values, decoded[0].values, decoded[0].errors)


@pytest.mark.anyio
async def test_jsonl_lone_cr_ends_a_line(tmp_path: Path) -> None:
    """Lone CR line endings (and mixed ones) end lines: one record each, positions counted."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"1\r2\r\r3\r\n4\n5\r")
    batches = await read_to_end(JsonLinesSource(str(path), decode=True))
    expected = [([1, 2, 3, 4, 5], [0, 1, 3, 4, 5], 6)]
    assert expected == [(b.values, offsets(b), b.end) for b in batches]
    resumed = await read_to_end(JsonLinesSource(str(path)), positions={str(path): 3})
    assert [[b"3", b"4", b"5"]] == [b.values for b in resumed]


@pytest.mark.anyio
async def test_line_endings_across_read_chunks(tmp_path: Path) -> None:
    """A CRLF or a lone CR cut between two 64 KiB read chunks still ends exactly one line."""
    path = tmp_path / "a.jsonl"
    first = b"[" + b"0," * 32766 + b"0]"  # 65,535 bytes: its CR is the chunk's last byte
    path.write_bytes(first + b"\r\n7\r" + first + b"\r8\r\n")
    batches = await read_to_end(JsonLinesSource(str(path)))
    expected = [[first, b"7", first, b"8"]]
    assert expected == [b.values for b in batches]


@pytest.mark.anyio
async def test_jsonl_big_integers_decode_exactly(tmp_path: Path) -> None:
    """Integers beyond 64 bits decode exactly, never as floats; the 64-bit edges stay ints."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(
        b'{"id": 123456789012345678901234567890}\n'
        b"[18446744073709551615, -9223372036854775808, 18446744073709551616]\n"
        b'{"s": "1234567890123456789012", "f": 1.5}\n'
    )
    [batch] = await read_to_end(JsonLinesSource(str(path), decode=True))
    expected = [
        {"id": 123456789012345678901234567890},
        [2**64 - 1, -(2**63), 2**64],
        {"s": "1234567890123456789012", "f": 1.5},
    ]
    assert expected == batch.values
    assert [[int, int, int]] == [[type(n) for n in batch.values[1]]]


def test_parse_json_big_integers_and_out_of_range() -> None:
    """parse_json_line and parse_json_batch keep big integers; an unconvertible one is refused."""
    big = b"-123456789012345678901234567890"
    assert -123456789012345678901234567890 == parse_json_line(big)
    assert [{"a": 2**70}, 1] == parse_json_batch(batch_of([b'{"a": %d}' % 2**70, b"1"]))
    assert [7 * 10**399, 2] == parse_json_batch(batch_of([b"7" + b"0" * 399, b"2"]))
    problems = []
    for bad in (b"9" * 5000, b"[1e400]", b"[-Infinity]"):
        with pytest.raises(DecodeError) as error:
            parse_json_batch(batch_of([b"1", bad], start=9))
        problems.append((error.value.reason, str(error.value).split(":")[2]))
    expected = [
        ("number_out_of_range", " a number is out of range"),
        ("number_out_of_range", " a number is out of range"),
        ("decode_error", " invalid JSON at column 3"),
    ]
    assert expected == problems


def test_encode_json_is_exact_or_refuses() -> None:
    """Big integers are written exactly; NaN and infinities are DataErrors, never null."""
    assert (
        b'{"n":123456789012345678901234567890,"m":[-340282366920938463463374607431768211456]}'
        == (encode_json({"n": 123456789012345678901234567890, "m": [-(2**128)]}))
    )
    reasons = []
    for bad in (float("nan"), {"a": [1.0, float("inf")]}, (None, float("-inf")), object()):
        with pytest.raises(DataError) as error:
            encode_json(bad)
        reasons.append(error.value.reason)
    expected = ["non_finite_number"] * 3 + ["not_json_serializable"]
    assert expected == reasons
    assert b"[null,1]" == encode_json([None, 1])


@pytest.mark.anyio
async def test_jsonl_sink_refuses_non_finite_numbers(tmp_path: Path) -> None:
    """A NaN or an infinity is a DataError with reason non_finite_number, never written as null."""
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path)
    await sink.open()
    try:
        with pytest.raises(DataError) as error:
            await sink.write(batch_of([{"v": None}, {"v": float("nan")}], start=3))
        await sink.write(batch_of([{"v": None, "big": 2**80}]))
    finally:
        await sink.aclose()
    message = f"{path}: cannot write the record at in@4: not JSON-serialisable: it holds nan"
    assert ("non_finite_number", message) == (error.value.reason, str(error.value)[: len(message)])
    assert b'{"v":null,"big":1208925819614629174706176}\n' == path.read_bytes()


@pytest.mark.anyio
async def test_jsonl_sink_refuses_raw_bytes_with_a_line_break(tmp_path: Path) -> None:
    """Raw bytes holding a CR would read back as two lines: a DataError, nothing written."""
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path)
    await sink.open()
    try:
        with pytest.raises(DataError) as error:
            await sink.write(batch_of([b"1", b"2\r3"]))
    finally:
        await sink.aclose()
    assert ("line_break_in_bytes", b"") == (error.value.reason, path.read_bytes())


@pytest.mark.anyio
async def test_file_sinks_create_a_missing_directory(tmp_path: Path) -> None:
    """The JSON Lines and CSV sinks create their missing parent directories on open."""
    jsonl, csv = tmp_path / "a" / "b" / "out.jsonl", tmp_path / "c" / "out.csv"
    for sink in (JsonLinesSink(jsonl), CsvSink(csv, ["n"])):
        await sink.open()
        await sink.write(batch_of([{"n": 1}]))
        await sink.aclose()
    assert (b'{"n":1}\n', b"n\r\n1\r\n") == (jsonl.read_bytes(), csv.read_bytes())


@pytest.mark.anyio
async def test_csv_bom_and_lone_cr(tmp_path: Path) -> None:
    """A BOM does not rename the first column, and lone CR line endings end rows."""
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xef\xbb\xbfid,name\r1,a\r2,b\r")
    [batch] = await read_to_end(CsvSource(str(path)))
    expected = ([{"id": "1", "name": "a"}, {"id": "2", "name": "b"}], [1, 2], 3)
    assert expected == (batch.values, offsets(batch), batch.end)


@pytest.mark.anyio
async def test_csv_unterminated_quote_sets_one_line_aside(tmp_path: Path) -> None:
    """A quote never closed rejects its line only; the lines after it are rows again."""
    path = write_lines(tmp_path / "a.csv", ["id,name", "1,a", '2,"b', "3,c", "4,d"])
    [batch] = await read_to_end(CsvSource(path))
    expected = [
        {"id": "1", "name": "a"},
        b'2,"b',
        {"id": "3", "name": "c"},
        {"id": "4", "name": "d"},
    ]
    assert expected == batch.values
    problem = f"{path}:3: malformed CSV: unexpected end of data"
    assert {2: (b'2,"b', problem)} == rejected(batch)


@pytest.mark.anyio
async def test_csv_text_after_a_closing_quote(tmp_path: Path) -> None:
    """Text after a closing quote is malformed CSV (not silently glued to the field)."""
    path = write_lines(tmp_path / "a.csv", ["k,v", '1,"ab"c', "2,d"])
    [batch] = await read_to_end(CsvSource(path))
    assert [b'1,"ab"c', {"k": "2", "v": "d"}] == batch.values
    problem = f"{path}:2: malformed CSV: ',' expected after '\"'"
    assert {1: (b'1,"ab"c', problem)} == rejected(batch)


@pytest.mark.anyio
async def test_csv_multiline_row_with_bad_text_is_rejected_whole(tmp_path: Path) -> None:
    """A quoted row spanning lines is rejected whole when one of its lines is not valid UTF-8."""
    path = tmp_path / "a.csv"
    path.write_bytes(b'k,v\n1,"one\ntw\xffo",x\n2,"ok"\n')
    [batch] = await read_to_end(CsvSource(str(path)))
    assert [b'1,"one\ntw\xffo",x', {"k": "2", "v": "ok"}] == batch.values
    problem = f"{path}:3: not valid utf-8 text at byte 2: invalid start byte"
    assert {1: (b'1,"one\ntw\xffo",x', problem)} == rejected(batch)


@pytest.mark.anyio
async def test_csv_bad_header_sets_the_file_aside_whole(tmp_path: Path) -> None:
    """A header naming a column twice sets the file aside: one rejected record, no rows."""
    path = write_lines(tmp_path / "a.csv", ["id,id", "1,2", "3,4"])
    batches = await read_to_end(CsvSource(path))
    expected = [([b"id,id"], 0, 3)]
    assert expected == [(b.values, b.start, b.end) for b in batches]
    problem = f"{path}:1: the header names 'id' more than once; the file is set aside whole"
    assert {0: (b"id,id", problem)} == rejected(batches[0])
    resumed = await read_to_end(CsvSource(path), positions={path: 3})
    assert [] == resumed


def test_csv_options_are_checked_when_built(tmp_path: Path) -> None:
    """An encoding that is not ASCII-compatible and a bad delimiter are named ConfigErrors."""
    problems = []
    for build in (
        lambda: CsvSource(str(tmp_path), encoding="utf-16"),
        lambda: CsvSource(str(tmp_path), delimiter=""),
        lambda: CsvSink(tmp_path / "a.csv", ["a"], encoding="nope"),
    ):
        with pytest.raises(ConfigError) as error:
            build()
        problems.append(error.value.option)
    assert ["CsvSource.encoding", "CsvSource.delimiter", "CsvSink.encoding"] == problems


BLOCK = 1 << 18
"""The size of the blocks JsonLinesSource splits into lines (edge cases are placed around it)."""


def awkward_jsonl() -> bytes:
    """JSON Lines with every kind of line ending, empty lines and lines across block boundaries."""
    parts = [b"\xef\xbb\xbf1\n", b"\n", b"2\r\n", b"3\r", b"\r\n", b"4"]
    size = sum(map(len, parts))
    for boundary, tail in (
        (BLOCK, b"\r\n"),  # a CRLF cut by the block boundary
        (2 * BLOCK, b"\r"),  # a lone CR that ends a block
        (3 * BLOCK, b"\n"),  # an LF that ends a block
        (4 * BLOCK + 3, b"\n"),  # a line that starts just after a boundary
    ):
        filler = boundary - size - 3  # the tail starts at the last byte of a block
        parts.append(b'"' + b"x" * (filler - 2) + b'"' + b"\n")
        parts.append(b"5" + tail)
        size = sum(map(len, parts))
    parts.append(b'"' + b"y" * (BLOCK * 2) + b'"\n')  # a line longer than two blocks
    parts.append(b"6\n\n\r\n7")
    return b"".join(parts)


def expected_records(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """Non-empty lines by index (split at LF, CRLF or lone CR, BOM removed) and the line count."""
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines[-1] == b"":
        lines.pop()  # the file ends with a line break: no line after it
    lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")
    return [(i, line) for i, line in enumerate(lines) if line], len(lines)


@pytest.mark.anyio
@pytest.mark.parametrize("max_records", [1, 3, 1000])
async def test_jsonl_lines_across_blocks(tmp_path: Path, max_records: int) -> None:
    """Lines split a block at a time are the same as split one by one, wherever blocks end."""
    data = awkward_jsonl()
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    records, count = expected_records(data)
    batches = await read_to_end(JsonLinesSource(str(path)), max_records=max_records)
    got = [(b.offset_of(i), v) for b in batches for i, v in enumerate(b.values)]
    assert records == got
    assert count == batches[-1].end
    assert all(len(b) <= max_records for b in batches)


@pytest.mark.anyio
@pytest.mark.parametrize("position", [1, 5, 9, 10, 11, 13])
async def test_jsonl_resume_across_blocks(tmp_path: Path, position: int) -> None:
    """A resumed file skips exactly the lines before its position, across block boundaries."""
    data = awkward_jsonl()
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    records, count = expected_records(data)
    batches = await read_to_end(JsonLinesSource(str(path)), 4, {str(path): position})
    got = [(b.offset_of(i), v) for b in batches for i, v in enumerate(b.values)]
    assert [r for r in records if r[0] >= position] == got
    assert count == (batches[-1].end if batches else count)


@pytest.mark.anyio
async def test_jsonl_decoded_full_batches_keep_errors(tmp_path: Path) -> None:
    """Past the first batch, full runs of lines decode the same: bad lines keep their errors."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "2", "3", "{oops", "5", "[6,", "7"])
    batches = await read_to_end(JsonLinesSource(path, decode=True), max_records=2)
    expected = [
        ([1, 2], 0, 2, {}),
        ([3, b"{oops"], 2, 4, {3: f"{path}:4"}),
        ([5, b"[6,"], 4, 6, {5: f"{path}:6"}),
        ([7], 6, 7, {}),
    ]
    got = [
        (b.values, b.start, b.end, {o: m.partition(": ")[0] for o, (_, m) in rejected(b).items()})
        for b in batches
    ]
    assert expected == got
