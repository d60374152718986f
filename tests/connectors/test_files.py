"""JSON Lines and CSV sources and sinks."""

from __future__ import annotations

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


@pytest.mark.anyio
async def test_jsonl_malformed_line_ends_batch_then_raises(tmp_path: Path) -> None:
    """A bad line ends the batch before it, then read raises a DecodeError naming path:line."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "2", "{oops", "4"])
    source = JsonLinesSource(path, decode=True)
    await source.open(context())
    try:
        batch = await source.read(10)
        assert batch is not None
        prefix = ([1, 2], 2)
        assert prefix == (batch.values, batch.end)
        with pytest.raises(DecodeError) as first:
            await source.read(10)
        with pytest.raises(DecodeError) as again:
            await source.read(10)
    finally:
        await source.aclose()
    expected = (path, 3, path)
    assert expected == (first.value.source, first.value.line, first.value.partition)
    assert str(first.value).startswith(f"{path}:3: invalid JSON")
    assert str(first.value) == str(again.value)


@pytest.mark.anyio
async def test_jsonl_malformed_first_line_raises_at_once(tmp_path: Path) -> None:
    """A bad line at the start of a batch raises immediately, naming the line."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "[1,", "3"])
    with pytest.raises(DecodeError, match=rf"^{path}:2: invalid JSON"):
        await read_to_end(JsonLinesSource(path, decode=True), positions={path: 1})


@pytest.mark.anyio
async def test_jsonl_malformed_line_in_a_later_batch(tmp_path: Path) -> None:
    """Batches before a bad line are served whole; its line counts the empty lines before it."""
    path = write_lines(tmp_path / "a.jsonl", ["1", "2", "", "3", "", "x", "5"])
    source = JsonLinesSource(path, decode=True)
    await source.open(context())
    try:
        batches = [await source.read(2), await source.read(2)]
        with pytest.raises(DecodeError, match=rf"^{path}:6: invalid JSON"):
            await source.read(2)
    finally:
        await source.aclose()
    expected = [([1, 2], 2), ([3], 5)]
    assert expected == [(b.values, b.end) for b in batches if b is not None]


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
async def test_csv_malformed_row(tmp_path: Path) -> None:
    """A row with the wrong field count ends the batch, then raises naming path:line."""
    path = write_lines(tmp_path / "a.csv", ["a,b", "1,2", "3", "5,6"])
    source = CsvSource(path)
    await source.open(context())
    try:
        batch = await source.read(10)
        assert batch is not None
        expected = ([{"a": "1", "b": "2"}], 2)
        assert expected == (batch.values, batch.end)
        with pytest.raises(DecodeError) as error:
            await source.read(10)
    finally:
        await source.aclose()
    assert f"{path}:3: expected 2 fields (the header's), got 1" == str(error.value)


@pytest.mark.anyio
async def test_csv_undecodable_text(tmp_path: Path) -> None:
    """Bytes that are not valid text in the file's encoding are a DecodeError naming the file."""
    path = tmp_path / "a.csv"
    path.write_bytes(b"a\n\xff\n")
    with pytest.raises(DecodeError, match=rf"^{path}: not valid utf-8 text after line"):
        await read_to_end(CsvSource(str(path)))


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
