"""Bad input in real files: each rejected record is dead-lettered with its reason, the rest goes on.

Each test runs a whole pipeline over files in ``tmp_path`` and counts twice: the
records at the sink, and the letters in the dead-letter store, each with its
reason, file and line. Good records next to a bad one arrive intact and in order.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import riprap
import riprap.checkpoints
from riprap.connectors.files import CsvSource, JsonLinesSink, JsonLinesSource, parse_json_line
from riprap.connectors.memory import IterableSource
from riprap.connectors.sqlite import SqliteSink, read_table
from riprap.deadletters import DeadLetter, JsonLinesDeadLetters, read_dead_letters

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

BIG = 123456789012345678901234567890


def pipeline(tmp_path: Path, source: riprap.Source, **options: Any) -> riprap.Pipeline:
    """A pipeline over ``source``, its checkpoints and dead-letter store in ``tmp_path``."""
    return riprap.Pipeline(
        "bad-input",
        checkpoint=riprap.checkpoints.SqliteCheckpoints(tmp_path / "ckpt.db"),
        dead_letter=JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
        dlq_guard=None,
        **options,
    ).source(source)


def letters(tmp_path: Path) -> list[DeadLetter]:
    """The dead letters stored so far (none if the store was never created)."""
    store = tmp_path / "dlq.jsonl"
    return list(read_dead_letters(store)) if store.exists() else []


def summary(letter: DeadLetter) -> tuple[str, str, int | None, Any, str]:
    """A letter's stage, reason, offset, original value and message up to its second colon."""
    return (
        letter.stage,
        letter.reason,
        letter.offset,
        letter.original_value(),
        ":".join(letter.message.split(":")[:3]),
    )


async def test_jsonl_decoding_source_dead_letters_bad_lines(tmp_path: Path) -> None:
    """BOM, lone CRs and big integers are read right; bad lines land in the DLQ by reason."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        b'\xef\xbb\xbf{"id": 1, "big": %d}\r{oops\r{"id": 3}\r\n[1e400]\n{"id": 5}' % BIG
    )
    out = tmp_path / "out" / "good.jsonl"
    run = pipeline(tmp_path, JsonLinesSource(str(data), decode=True)).sink(JsonLinesSink(out))
    report = await run.run()
    written = b'{"id":1,"big":%d}\n{"id":3}\n{"id":5}\n' % BIG
    assert written == out.read_bytes()
    expected = [
        ("jsonl", "decode_error", 1, b"{oops", f"{data}:2: invalid JSON at column 2"),
        ("jsonl", "number_out_of_range", 3, b"[1e400]", f"{data}:4: a number is out of range"),
    ]
    assert expected == [summary(letter) for letter in letters(tmp_path)]
    dead = {"decode_error": 1, "number_out_of_range": 1}
    assert (5, 3, dead) == (report.records_in, report.records_out, report.dead_lettered)


async def test_a_rerun_reads_past_rejected_lines(tmp_path: Path) -> None:
    """After a run that dead-lettered a line, a second run reads nothing: no stop, no repeat."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"id": 1}\nnope\n{"id": 3}\n')
    out = tmp_path / "good.jsonl"
    for _ in range(2):
        run = pipeline(tmp_path, JsonLinesSource(str(data), decode=True))
        await run.sink(JsonLinesSink(out)).run()
    assert (b'{"id":1}\n{"id":3}\n', [1]) == (
        out.read_bytes(),
        [letter.offset for letter in letters(tmp_path)],
    )


async def test_raw_lines_parsed_in_a_step_keep_big_integers(tmp_path: Path) -> None:
    """Raw lines decoded with parse_json_line in a step keep big integers and dead-letter junk."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"%d\n[%d]\n{\n" % (BIG, -BIG))
    out = tmp_path / "good.jsonl"
    run = pipeline(tmp_path, JsonLinesSource(str(data))).map("parse", parse_json_line)
    await run.sink(JsonLinesSink(out)).run()
    assert [BIG, [-BIG]] == [parse_json_line(line) for line in out.read_bytes().splitlines()]
    expected = [
        ("parse", "decode_error", 2, b"{", "invalid JSON at column 2: unexpected end of data")
    ]
    assert expected == [summary(letter) for letter in letters(tmp_path)]


async def test_big_integers_nested_too_deep_to_decode_exactly_are_a_decode_error(
    tmp_path: Path,
) -> None:
    """A big integer 1,000 arrays deep is valid for orjson but too deep for the exact decoder:
    the line is dead-lettered (``decode_error``, saying why), not a RecursionError that
    stops the run, and the lines around it are read.
    """
    data = tmp_path / "in.jsonl"
    deep = b"[" * 1000 + b"%d" % BIG + b"]" * 1000
    data.write_bytes(b'{"id": 1}\n' + deep + b'\n{"id": 3}\n')
    out = tmp_path / "good.jsonl"
    report = (
        await pipeline(tmp_path, JsonLinesSource(str(data), decode=True))
        .sink(JsonLinesSink(out))
        .run()
    )
    assert b'{"id":1}\n{"id":3}\n' == out.read_bytes()
    [letter] = letters(tmp_path)
    assert ("jsonl", "decode_error", 1, deep) == summary(letter)[:4]
    assert letter.message.startswith(f"{data}:2: nested too deep to decode its integers")
    assert {"decode_error": 1} == report.dead_lettered


async def test_csv_bad_rows_are_dead_lettered_with_file_and_line(tmp_path: Path) -> None:
    """Ragged rows, a quote never closed and invalid UTF-8 are dead-lettered; good rows go on."""
    data = tmp_path / "in.csv"
    data.write_bytes(
        b"\xef\xbb\xbfid,name\r\n"
        b"1,ann\r\n"
        b"2,bob,extra\r\n"
        b'3,"cy\r\n'
        b"4,d\xffn\r\n"
        b"5,eve\r\n"
        b"6\r\n"
        b"7,fay\r\n"
    )
    out = tmp_path / "good.jsonl"
    report = await pipeline(tmp_path, CsvSource(str(data))).sink(JsonLinesSink(out)).run()
    good = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [
        {"id": "1", "name": "ann"},
        {"id": "5", "name": "eve"},
        {"id": "7", "name": "fay"},
    ] == good
    expected = [
        (
            "csv",
            "decode_error",
            2,
            b"2,bob,extra",
            f"{data}:3: expected 2 fields (the header's), got 3",
        ),
        ("csv", "decode_error", 3, b'3,"cy', f"{data}:4: malformed CSV: unexpected end of data"),
        (
            "csv",
            "decode_error",
            4,
            b"4,d\xffn",
            f"{data}:5: not valid utf-8 text at byte 3: invalid start byte",
        ),
        ("csv", "decode_error", 6, b"6", f"{data}:7: expected 2 fields (the header's), got 1"),
    ]
    assert expected == [
        (letter.stage, letter.reason, letter.offset, letter.original_value(), letter.message)
        for letter in letters(tmp_path)
    ]
    assert (7, 3, {"decode_error": 4}) == (
        report.records_in,
        report.records_out,
        report.dead_lettered,
    )


async def test_csv_bad_row_without_a_dead_letter_store_stops_naming_the_line(
    tmp_path: Path,
) -> None:
    """Without a dead-letter store a bad row stops the run, naming the source, file and line."""
    data = tmp_path / "in.csv"
    data.write_bytes(b"a,b\n1,2\n3\n")
    run = (
        riprap.Pipeline("strict", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(CsvSource(str(data)))
        .sink(JsonLinesSink(tmp_path / "out.jsonl"))
    )
    with pytest.raises(riprap.PipelineError) as info:
        await run.run()
    expected = (
        f"pipeline 'strict' stopped: stage 'csv' failed at {data}@2: DecodeError: "
        f"{data}:3: expected 2 fields (the header's), got 1"
    )
    assert expected == str(info.value)


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_non_finite_numbers_are_dead_lettered_at_the_sink(tmp_path: Path, kind: str) -> None:
    """A NaN or an infinity a step produced is dead-lettered (non_finite_number), never null."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        b'{"id": 1, "a": 1, "b": 2}\n{"id": 2, "a": 1, "b": 0}\n{"id": 3, "a": 0, "b": 0}\n'
    )

    def ratio(row: dict[str, Any]) -> dict[str, Any]:
        inf_or_nan = float("inf") if row["a"] else float("nan")
        return {"id": row["id"], "ratio": row["a"] / row["b"] if row["b"] else inf_or_nan}

    sink: riprap.Sink = (
        JsonLinesSink(tmp_path / "db" / "out.jsonl")
        if kind == "jsonl"
        else SqliteSink(tmp_path / "db" / "out.sqlite", "ratios")
    )
    run = pipeline(tmp_path, JsonLinesSource(str(data), decode=True), batch_size=10)
    await run.map("ratio", ratio).sink(sink).run()
    if kind == "jsonl":
        written = (tmp_path / "db" / "out.jsonl").read_bytes()
    else:
        table = await read_table(tmp_path / "db" / "out.sqlite", "ratios")
        written = b"".join(orjson.dumps(value) + b"\n" for value in table.values())
    assert b'{"id":1,"ratio":0.5}\n' == written
    assert [(kind, "non_finite_number", 1), (kind, "non_finite_number", 2)] == [
        (letter.stage, letter.reason, letter.offset) for letter in letters(tmp_path)
    ]


def holds_itself() -> dict[str, Any]:
    """A record whose step put it inside itself."""
    record: dict[str, Any] = {"id": 2}
    record["me"] = record
    return record


def nested(depth: int) -> dict[str, Any]:
    """A record holding lists ``depth`` deep."""
    inner: list[Any] = []
    record = {"id": 2, "tree": inner}
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return record


@pytest.mark.parametrize("sink_kind", ["jsonl", "sqlite"])
@pytest.mark.parametrize("make", [holds_itself, lambda: nested(3_000)], ids=["cycle", "deep"])
async def test_a_value_json_cannot_nest_is_dead_lettered_not_a_stopped_run(
    tmp_path: Path, sink_kind: str, make: Any
) -> None:
    """A record that holds itself, or is nested thousands of levels deep, is dead-lettered at
    the sink (``not_json_serializable``, saying why), with the records around it written:
    not a RecursionError that stops the run at every restart.
    """
    sink: riprap.Sink = (
        JsonLinesSink(tmp_path / "db" / "out.jsonl")
        if sink_kind == "jsonl"
        else SqliteSink(tmp_path / "db" / "out.sqlite", "rows", key="id")
    )
    values = [{"id": 1}, make(), {"id": 3}]
    report = await pipeline(tmp_path, IterableSource("rows", values)).sink(sink).run()
    [letter] = letters(tmp_path)
    assert (2, {"not_json_serializable": 1}) == (report.records_out, report.dead_lettered)
    assert (sink_kind, 1) == (letter.stage, letter.offset)
    assert "nested too deep (over 255 levels), or it holds itself" in letter.message


async def test_a_file_name_that_is_not_utf8_is_read_checkpointed_and_dead_lettered(
    tmp_path: Path,
) -> None:
    """A Latin-1 file name (its bad byte a lone surrogate in the OS's text) is a partition
    named with a ``\\xNN`` escape: the run checkpoints it, a bad line in it is dead-lettered
    naming it, and a second run reads nothing again.
    """
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.jsonl")).write_bytes(b'{"id": 1}\nnope\n{"id": 3}\n')
    out = tmp_path / "out.jsonl"
    reports = []
    for _ in range(2):
        run = pipeline(tmp_path, JsonLinesSource(str(folder / "*.jsonl"), decode=True))
        reports.append(await run.sink(JsonLinesSink(out)).run())
    [letter] = letters(tmp_path)
    escaped = f"{folder}/caf\\xe9.jsonl"
    assert b'{"id":1}\n{"id":3}\n' == out.read_bytes()
    assert [3, 0] == [report.records_in for report in reports]
    assert (escaped, 1, f"{escaped}:2: invalid JSON") == (
        letter.partition,
        letter.offset,
        letter.message[: len(f"{escaped}:2: invalid JSON")],
    )
