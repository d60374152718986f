"""A file replaced under its name is not resumed at the old file's line count."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

import riprap
import riprap.checkpoints
from riprap.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointIntegrityError,
    SqliteCheckpoints,
    decode,
    encode,
)
from riprap.cli import main
from riprap.connectors.files import CsvSource, JsonLinesSource
from riprap.connectors.memory import MemorySink
from riprap.lowlevel import PartitionIdentities

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def export(path: Path, day: int, count: int) -> None:
    """A day's export: ``count`` orders, ids ``day * 1000`` on, one JSON object a line."""
    orders = ({"id": day * 1000 + i, "day": day, "note": "x" * 20} for i in range(count))
    path.write_bytes(b"".join(orjson.dumps(order) + b"\n" for order in orders))


def append(path: Path, day: int, first: int, count: int) -> None:
    """``count`` more orders of ``day`` at the end of ``path``, ids from ``first`` on."""
    with path.open("ab") as file:
        for i in range(first, first + count):
            file.write(orjson.dumps({"id": day * 1000 + i, "day": day, "note": "x" * 20}) + b"\n")


async def ids_read(source: riprap.Source, store: Path, name: str = "exports") -> list[int]:
    """Run a pipeline over ``source`` with SQLite checkpoints; the ids that reached the sink."""
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline(name, checkpoint=SqliteCheckpoints(store), batch_size=50)
        .source(source)
        .map("parse", orjson.loads)
        .sink(sink)
    )
    await pipeline.run()
    return [value["id"] for value in sink.values]


def stored_positions(store: Path, name: str = "exports") -> dict[str, int]:
    """The positions of the pipeline's latest checkpoint, read from the store's file."""
    with sqlite3.connect(store) as db:
        (data,) = db.execute(
            "SELECT snapshot FROM riprap_checkpoints WHERE pipeline = ?", (name,)
        ).fetchone()
    return dict(decode(data, where=str(store), pipeline=name).positions)


async def test_a_replaced_export_stops_the_run_and_is_read_whole_once_set_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Day 2's longer export under day 1's name: no line of it is skipped or read silently."""
    path, store = tmp_path / "orders.jsonl", tmp_path / "checkpoints.db"
    export(path, 1, 100)
    assert list(range(1000, 1100)) == await ids_read(JsonLinesSource(path), store)
    export(path, 2, 300)
    with pytest.raises(CheckpointError) as caught:
        await ids_read(JsonLinesSource(path), store)
    message = str(caught.value)
    assert (True, True, {str(path): 100}) == (
        message.startswith(f"{path}: the checkpoint resumes at line 100, but the file is not"),
        message.endswith("set the partition's position to 0 (riprap checkpoint set)"),
        stored_positions(store),
    )
    assert 0 == await anyio.to_thread.run_sync(main, ["checkpoint", "set", str(store), f"{path}=0"])
    capsys.readouterr()
    assert list(range(2000, 2300)) == await ids_read(JsonLinesSource(path), store)


async def test_an_appended_file_resumes_after_what_was_read(tmp_path: Path) -> None:
    """Appending keeps a file's head: the next run reads only the new lines, a small file too."""
    path, store = tmp_path / "orders.jsonl", tmp_path / "checkpoints.db"
    export(path, 1, 3)  # under 4 KiB: its whole content is its head
    assert [1000, 1001, 1002] == await ids_read(JsonLinesSource(path), store)
    append(path, 1, 3, 200)
    assert list(range(1003, 1203)) == await ids_read(JsonLinesSource(path), store)
    append(path, 1, 203, 2)
    assert [1203, 1204] == await ids_read(JsonLinesSource(path), store)


async def test_a_position_set_by_hand_resumes_in_the_new_file(tmp_path: Path) -> None:
    """An operator who sets a replaced file's position says where to resume: no refusal."""
    path, store = tmp_path / "orders.jsonl", tmp_path / "checkpoints.db"
    export(path, 1, 100)
    await ids_read(JsonLinesSource(path), store)
    export(path, 2, 300)
    assert 0 == await anyio.to_thread.run_sync(
        main, ["checkpoint", "set", str(store), f"{path}=250"]
    )
    assert list(range(2250, 2300)) == await ids_read(JsonLinesSource(path), store)


async def test_a_replaced_csv_file_with_the_same_header_is_refused(tmp_path: Path) -> None:
    """The same header and other rows is another file: CsvSource refuses to resume it too."""
    path, store = tmp_path / "orders.csv", tmp_path / "checkpoints.db"

    async def run() -> list[str]:
        sink = MemorySink()
        pipeline = (
            riprap.Pipeline("csv", checkpoint=SqliteCheckpoints(store))
            .source(CsvSource(path))
            .sink(sink)
        )
        await pipeline.run()
        return [row["id"] for row in sink.values]

    path.write_text("id,day\n" + "".join(f"{i},1\n" for i in range(50)))
    assert 50 == len(await run())
    path.write_text("id,day\n" + "".join(f"{i},2\n" for i in range(500, 700)))
    with pytest.raises(CheckpointError, match="the file is not the one it was counted in"):
        await run()


async def test_a_merged_file_source_is_checked_under_its_member_name(tmp_path: Path) -> None:
    """In a merge, the member's file is checked by its own name; the other member goes on."""
    store = tmp_path / "checkpoints.db"
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    export(a, 1, 60)
    export(b, 5, 40)

    def pipeline(sink: MemorySink) -> riprap.Pipeline:
        return (
            riprap.Pipeline("merged", checkpoint=SqliteCheckpoints(store))
            .sources(a=JsonLinesSource(a), b=JsonLinesSource(b))
            .map("parse", orjson.loads)
            .sink(sink)
        )

    first = MemorySink()
    await pipeline(first).run()
    assert 100 == len(first.values)
    export(b, 6, 80)
    with pytest.raises(CheckpointError, match=f"^{b}: the checkpoint resumes at line 40"):
        await pipeline(MemorySink()).run()
    assert {f"a/{a}": 60, f"b/{b}": 40} == stored_positions(store, "merged")


async def test_a_source_without_identities_resumes_as_before(tmp_path: Path) -> None:
    """A checkpoint without a file's fingerprint (written before they were kept) is trusted."""
    path, store = tmp_path / "orders.jsonl", tmp_path / "checkpoints.db"
    export(path, 1, 100)
    backend = SqliteCheckpoints(store)
    claim = await backend.claim("exports", "older riprap")
    await backend.save(Checkpoint("exports", claim.epoch, "older riprap", 1, {str(path): 40}))
    await backend.aclose()
    assert list(range(1040, 1100)) == await ids_read(JsonLinesSource(path), store)
    export(path, 2, 300)  # now its head is known: a replacement is refused
    with pytest.raises(CheckpointError, match="was it replaced"):
        await ids_read(JsonLinesSource(path), store)


def test_identities_that_are_not_strings_are_damage() -> None:
    """A stored snapshot whose identities are not partition -> string is refused on read."""
    bad: Any = {"orders.jsonl": 4096}
    data = encode(Checkpoint("p", 1, "a", 1, {"orders.jsonl": 3}, identities=bad))
    with pytest.raises(CheckpointIntegrityError, match="identities is not a mapping"):
        decode(data, where="store", pipeline="p")


def test_partition_identities_hand_out_copies_that_never_change() -> None:
    """A snapshot is the same object until a new identity is noted, and never changes."""
    identities = PartitionIdentities({"a": "1:x"})
    first = identities.snapshot()
    identities.note("a", "1:x")
    assert first is identities.snapshot()
    identities.note("b", "2:y")
    second = identities.snapshot()
    identities.note("a", "3:z")
    assert ({"a": "1:x"}, {"a": "1:x", "b": "2:y"}) == (first, second)
    assert ("3:z", None) == (identities.get("a"), identities.get("c"))


async def test_identities_hand_out_one_mapping_until_a_file_is_opened(tmp_path: Path) -> None:
    """identities() hands out the same mapping while no file was opened since."""
    path = tmp_path / "orders.jsonl"
    export(path, 1, 10)
    source = JsonLinesSource(path)
    await source.open(riprap.SourceContext(pipeline="p", positions={}))
    before = source.identities()
    batch = await source.read(5)
    assert batch is not None
    after = source.identities()
    assert ({}, [str(path)]) == (before, list(after))
    assert after is source.identities()
    await source.aclose()


class SinkThatWillNotOpen:
    """A sink whose open fails: the run stops before its source is opened."""

    name = "down"
    idempotent = True

    async def open(self) -> None:
        raise ConnectionError("the sink's server is down")

    async def write(self, batch: riprap.Batch) -> None:
        raise AssertionError("never opened")

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_a_run_that_fails_before_reading_keeps_what_it_resumed_from(
    tmp_path: Path,
) -> None:
    """The start-up mark and the failed run's checkpoint carry the identities on."""
    path, store = tmp_path / "orders.jsonl", tmp_path / "checkpoints.db"
    export(path, 1, 100)
    await ids_read(JsonLinesSource(path), store)
    failing = (
        riprap.Pipeline("exports", checkpoint=SqliteCheckpoints(store))
        .source(JsonLinesSource(path))
        .sink(SinkThatWillNotOpen())
    )
    with pytest.raises(ConnectionError):
        await failing.run()
    export(path, 2, 300)
    with pytest.raises(CheckpointError, match="was it replaced"):
        await ids_read(JsonLinesSource(path), store)


def feed_fifo(path: Path, lines: list[bytes], deadline: float) -> None:
    """Open the named pipe ``path`` for writing once a reader has it, and write ``lines``."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader opens it
            break
        except OSError as error:
            if error.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "wb") as pipe:
        pipe.writelines(lines)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
async def test_a_named_pipe_is_read_whole_and_not_checked(tmp_path: Path) -> None:
    """A pipe's head cannot be read twice: every line comes through, none taken for a digest."""
    path = tmp_path / "orders.jsonl"
    os.mkfifo(path)
    lines = [orjson.dumps({"id": i}) + b"\n" for i in range(1_000)]
    writer = threading.Thread(
        target=feed_fifo, args=(path, lines, time.monotonic() + 10), daemon=True
    )
    writer.start()
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("pipe", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(JsonLinesSource(path))
        .map("parse", orjson.loads)
        .sink(sink)
    )
    with anyio.fail_after(10):
        await pipeline.run()
    writer.join(timeout=10)
    assert list(range(1_000)) == [value["id"] for value in sink.values]


KILLED_AT_START = """
import os, signal, sys
import riprap
from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.files import JsonLinesSource


class KilledOnOpen:
    name, idempotent = "killed", True

    async def open(self):
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would, right after the start

    async def write(self, batch): ...
    async def flush(self): ...
    async def aclose(self): ...


pipeline = (
    riprap.Pipeline("exports", checkpoint=SqliteCheckpoints(sys.argv[2]))
    .source(JsonLinesSource(sys.argv[1]))
    .sink(KilledOnOpen())
)
riprap.run(pipeline, handle_signals=False)
"""


def test_a_run_killed_right_after_its_start_keeps_what_it_resumed_from(tmp_path: Path) -> None:
    """SIGKILL after the checkpoint that marks a start: the replaced file is still refused."""
    path, store = tmp_path / "orders.jsonl", tmp_path / "checkpoints.db"
    export(path, 1, 100)
    anyio.run(ids_read, JsonLinesSource(path), store)
    args = [sys.executable, "-c", KILLED_AT_START, str(path), str(store)]
    killed = subprocess.run(args, cwd=tmp_path, capture_output=True, timeout=60, check=False)
    assert -signal.SIGKILL == killed.returncode, killed.stderr.decode()[-2000:]
    export(path, 2, 300)
    with pytest.raises(CheckpointError, match="was it replaced"):
        anyio.run(ids_read, JsonLinesSource(path), store)
