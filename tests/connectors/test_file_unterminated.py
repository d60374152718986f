"""A last line read while it was still being written is never passed over as if it were whole."""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

import riprap
from riprap.checkpoints import CheckpointError, SqliteCheckpoints, decode
from riprap.cli import main
from riprap.connectors.files import CsvSource, JsonLinesSource, parse_json_line
from riprap.connectors.memory import MemorySink
from riprap.deadletters import JsonLinesDeadLetters

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def write(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` as a writer would, a piece at a time."""
    with path.open("ab") as file:
        file.write(data)


async def run(source: riprap.Source, tmp_path: Path) -> tuple[list[Any], dict[str, int]]:
    """One run with SQLite checkpoints and dead letters: what reached the sink, dead letters
    by reason."""
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(
            "tail",
            checkpoint=SqliteCheckpoints(tmp_path / "checkpoints.db"),
            dead_letter=JsonLinesDeadLetters(tmp_path / "dead.jsonl"),
            batch_size=2,
        )
        .source(source)
        .map("parse", parse_json_line if isinstance(source, JsonLinesSource) else dict)
        .sink(sink)
    )
    report = await pipeline.run()
    return list(sink.values), dict(report.dead_lettered)


def saved(tmp_path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """The positions and identities of the latest checkpoint, read from the store."""
    store = tmp_path / "checkpoints.db"
    with sqlite3.connect(store) as db:
        (data,) = db.execute("SELECT snapshot FROM riprap_checkpoints").fetchone()
    checkpoint = decode(data, where=str(store), pipeline="tail")
    return dict(checkpoint.positions), dict(checkpoint.identities)


async def set_position(tmp_path: Path, partition: str, position: int) -> None:
    """``riprap checkpoint set`` for one partition, as an operator runs it."""
    store = str(tmp_path / "checkpoints.db")
    argv = ["checkpoint", "set", store, "--pipeline", "tail", f"{partition}={position}"]
    assert 0 == await anyio.to_thread.run_sync(main, argv)


async def test_a_line_read_cut_stops_the_next_run_and_is_read_whole_once_set_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The writer was mid-line when the run read the file: the cut record is dead-lettered,
    and the next run, finding the line longer, stops instead of going on after it."""
    path = tmp_path / "events.jsonl"
    write(path, b'{"id":1}\n{"id":2}\n{"id":3,"na')
    assert ([{"id": 1}, {"id": 2}], {"decode_error": 1}) == await run(
        JsonLinesSource(path), tmp_path
    )
    write(path, b'me":"x"}\n{"id":4}\n')
    with pytest.raises(CheckpointError) as caught:
        await run(JsonLinesSource(path), tmp_path)
    assert str(caught.value).startswith(
        f"{path}: line 3 was read before it was complete (it ended the file without a line "
        "break, 11 bytes) and now holds 19 bytes"
    )
    assert "set the partition's position to 2; to go on after it, to 3" in str(caught.value)
    assert {str(path): 3} == saved(tmp_path)[0]
    await set_position(tmp_path, str(path), 2)
    capsys.readouterr()
    assert ([{"id": 3, "name": "x"}, {"id": 4}], {}) == await run(JsonLinesSource(path), tmp_path)
    assert ([], {}) == await run(JsonLinesSource(path), tmp_path)


async def test_a_last_line_without_a_line_break_is_read_once_whatever_follows(
    tmp_path: Path,
) -> None:
    """A file whose last line has no line break (a complete record): read once; the runs after
    read nothing; its line break arriving later reads nothing either; new lines are read."""
    path = tmp_path / "export.jsonl"
    write(path, b'{"id":1}\n{"id":2}')
    assert ([{"id": 1}, {"id": 2}], {}) == await run(JsonLinesSource(path), tmp_path)
    positions, identities = saved(tmp_path)
    assert (positions[str(path)], identities[str(path)].endswith("+8")) == (2, True)
    assert ([], {}) == await run(JsonLinesSource(path), tmp_path)
    assert saved(tmp_path)[1][str(path)].endswith("+8")  # kept while the position stays
    write(path, b"\n")
    assert ([], {}) == await run(JsonLinesSource(path), tmp_path)
    assert "+" not in saved(tmp_path)[1][str(path)]  # whole after all: nothing left to check
    write(path, b'{"id":3}\n')
    assert ([{"id": 3}], {}) == await run(JsonLinesSource(path), tmp_path)


async def test_wait_leaves_the_last_line_for_the_run_that_finds_its_line_break(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """For a file another program appends to: the unfinished line is not read, a warning says
    so, and once finished it is read whole, once."""
    path = tmp_path / "app.log.jsonl"
    write(path, b'{"id":1}\n{"id":2,"na')
    with caplog.at_level(logging.WARNING, logger="riprap.connectors.files"):
        assert ([{"id": 1}], {}) == await run(
            JsonLinesSource(path, unterminated_last_line="wait"), tmp_path
        )
    assert [
        f"{path}: its last line (11 bytes) has no line break yet; it is left for the next "
        "run (unterminated_last_line='wait')"
    ] == [r.getMessage() for r in caplog.records]
    assert {str(path): 1} == saved(tmp_path)[0]
    write(path, b'me":"x"}')
    assert ([], {}) == await run(JsonLinesSource(path, unterminated_last_line="wait"), tmp_path)
    write(path, b'\n{"id":3}\n')
    assert ([{"id": 2, "name": "x"}, {"id": 3}], {}) == await run(
        JsonLinesSource(path, unterminated_last_line="wait"), tmp_path
    )


async def test_a_line_read_cut_is_refused_after_a_switch_to_wait(tmp_path: Path) -> None:
    """Read cut by a run at the default, still unfinished when the next run waits: refused
    all the same (the record read was cut either way)."""
    path = tmp_path / "events.jsonl"
    write(path, b'{"id":1}\n{"id":2,"na')
    await run(JsonLinesSource(path), tmp_path)
    write(path, b'me"')
    with pytest.raises(CheckpointError, match="line 2 was read before it was complete"):
        await run(JsonLinesSource(path, unterminated_last_line="wait"), tmp_path)


async def test_a_csv_row_cut_mid_field_is_not_taken_for_a_whole_one(tmp_path: Path) -> None:
    """A CSV row cut mid-field is a valid shorter row (amount 12 for 125.50): the next run
    stops, and set back one line the whole row is read (an upserting sink keeps it)."""
    path = tmp_path / "orders.csv"
    write(path, b"id,amount\r\n1,10.00\r\n2,12")
    assert ([{"id": "1", "amount": "10.00"}, {"id": "2", "amount": "12"}], {}) == await run(
        CsvSource(path), tmp_path
    )
    write(path, b"5.50\r\n3,7.25\r\n")
    with pytest.raises(CheckpointError, match="line 3 was read before it was complete"):
        await run(CsvSource(path), tmp_path)
    await set_position(tmp_path, str(path), 2)
    expected = [{"id": "2", "amount": "125.50"}, {"id": "3", "amount": "7.25"}]
    assert (expected, {}) == await run(CsvSource(path), tmp_path)


async def test_a_csv_file_waits_for_its_last_row_to_end(tmp_path: Path) -> None:
    """``unterminated_last_line="wait"`` on CSV: the unfinished row is read once it ends."""
    path = tmp_path / "orders.csv"
    write(path, b"id,amount\n1,10.00\n2,12")
    source = CsvSource(path, unterminated_last_line="wait")
    assert ([{"id": "1", "amount": "10.00"}], {}) == await run(source, tmp_path)
    write(path, b"5.50\n")
    source = CsvSource(path, unterminated_last_line="wait")
    assert ([{"id": "2", "amount": "125.50"}], {}) == await run(source, tmp_path)


async def test_a_shorter_last_line_is_refused_as_a_rewrite(tmp_path: Path) -> None:
    """The last line read has fewer bytes now: the file was rewritten, not appended to."""
    path = tmp_path / "events.jsonl"
    head = b"".join(b'{"id":%d}\n' % i for i in range(1_000))  # past the 4 KiB head's digest
    write(path, head + b'{"id":2,"name":"long"}')
    await run(JsonLinesSource(path), tmp_path)
    path.write_bytes(head + b'{"id":2}')
    with pytest.raises(CheckpointError, match=r"line 1001 .* 22 bytes\) and now holds 8 bytes"):
        await run(JsonLinesSource(path), tmp_path)


def test_an_unknown_choice_is_a_config_error(tmp_path: Path) -> None:
    """Anything but "read" or "wait" is refused when the source is built, naming the option."""
    with pytest.raises(riprap.ConfigError, match="unterminated_last_line"):
        JsonLinesSource(tmp_path / "x.jsonl", unterminated_last_line="follow")  # type: ignore[arg-type]
    with pytest.raises(riprap.ConfigError, match="unterminated_last_line"):
        CsvSource(tmp_path / "x.csv", unterminated_last_line="")  # type: ignore[arg-type]


async def test_an_identity_with_a_malformed_length_checks_only_the_head(tmp_path: Path) -> None:
    """A note after the head's digest that is not a length is ignored, not a crash."""
    path = tmp_path / "events.jsonl"
    write(path, b'{"id":1}\n{"id":2}\n')
    await run(JsonLinesSource(path), tmp_path)
    positions, identities = saved(tmp_path)
    store = tmp_path / "checkpoints.db"
    with sqlite3.connect(store) as db:
        (data,) = db.execute("SELECT snapshot FROM riprap_checkpoints").fetchone()
    assert orjson.loads(data)["identities"] == identities
    source = JsonLinesSource(path)
    await source.open(
        riprap.SourceContext(
            pipeline="tail",
            positions=positions,
            identities={str(path): identities[str(path)] + "+x9"},
        )
    )
    try:
        assert await source.read(10) is None
    finally:
        await source.aclose()


async def test_a_csv_line_handed_back_is_not_noted_before_its_batch(tmp_path: Path) -> None:
    """A quote left open runs to the end of the file: its line is set aside and the lines
    after it read again as rows. The last line is noted only with the batch that holds it,
    so a checkpoint between the two batches holds no length for a line it did not pass."""
    path = tmp_path / "notes.csv"
    write(path, b'id,note\n1,a\n2,"open\n3,b')
    source = CsvSource(path)
    await source.open(riprap.SourceContext(pipeline="tail", positions={}))
    try:
        first = await source.read(2)
        assert first is not None
        assert (first.end, sorted(first.errors or {})) == (3, [1])
        assert "+" not in source.identities({str(path): 3})[str(path)]
        second = await source.read(2)
        assert second is not None
        assert (second.values, second.end) == ([{"id": "3", "note": "b"}], 4)
        assert source.identities({str(path): 4})[str(path)].endswith("+3")
        assert "+" not in source.identities({str(path): 3})[str(path)]
    finally:
        await source.aclose()
