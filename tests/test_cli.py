"""The ``riprap`` command: demo, run, dlq replay, exit codes."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.observability
from riprap.cli._main import load_pipeline

if TYPE_CHECKING:
    from pathlib import Path


def riprap_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "riprap.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def table(path: Path) -> list[tuple[str, str]]:
    """All rows of the demo's orders table, sorted."""
    with sqlite3.connect(path) as db:
        return sorted(db.execute('SELECT "id", "value" FROM "orders"').fetchall())


@pytest.mark.slow
def test_demo_runs_twice_and_resumes_to_identical_sink(tmp_path: Path) -> None:
    """The demo dead-letters the malformed orders, and a second run reads nothing new."""
    first = riprap_cli("demo", "--dir", "d", "--orders", "2000", cwd=tmp_path)
    assert 0 == first.returncode, first.stderr
    rows = table(tmp_path / "d" / "orders.db")
    letters = list(riprap.deadletters.read_dead_letters(tmp_path / "d" / "dead-letters.jsonl"))
    assert 2000 == len(rows) + len(letters)
    assert {"decode_error", "validation"} == {letter.reason for letter in letters}
    assert "records in             2,000" in first.stdout
    second = riprap_cli("demo", "--dir", "d", cwd=tmp_path)
    assert 0 == second.returncode, second.stderr
    assert "records in                 0" in second.stdout
    assert rows == table(tmp_path / "d" / "orders.db")


FIXED = """
import orjson
import riprap
from riprap.connectors.memory import IterableSource
from riprap.connectors.sqlite import SqliteSink

def parse(raw):
    value = orjson.loads(raw)
    value["amount"] = float(value["amount"]) if value["amount"] != "twelve" else 12.0
    return value

pipeline = (
    riprap.Pipeline("orders", checkpoint=riprap.checkpoints.SqliteCheckpoints("ckpt.db"))
    .source(IterableSource("unused", []))
    .map("parse", parse)
    .sink(SqliteSink("fixed.db", table="orders", key="id"))
)
"""


@pytest.mark.slow
def test_dlq_replay_is_recorded_and_does_not_repeat(tmp_path: Path) -> None:
    """Replaying letters through a fixed pipeline writes them once, even when run twice."""
    store = tmp_path / "dlq.jsonl"

    async def fill() -> None:
        sink = riprap.deadletters.JsonLinesDeadLetters(store)
        await sink.open()
        letters = [
            riprap.deadletters.DeadLetter.create(
                pipeline="orders",
                stage="parse",
                error=riprap.DataError("amount is not a number"),
                record=riprap.Record(
                    f'{{"id": {i}, "amount": "twelve"}}'.encode(), partition="in", offset=i
                ),
                source="in",
                attempts=1,
                first_failure_at=1.0,
                last_failure_at=1.0,
                config_hash="x",
                redactor=riprap.observability.Redactor(),
            )
            for i in range(5)
        ]
        await sink.write(letters)
        await sink.aclose()

    import anyio

    anyio.run(fill)
    (tmp_path / "fix.py").write_text(textwrap.dedent(FIXED))
    for expected_in in ("records in                 5", "records in                 0"):
        done = riprap_cli("dlq", "replay", str(store), "--pipeline", "fix.py", cwd=tmp_path)
        assert 0 == done.returncode, done.stderr
        assert expected_in in done.stdout
    with sqlite3.connect(tmp_path / "fixed.db") as db:
        assert 5 == db.execute('SELECT count(*) FROM "orders"').fetchone()[0]


def test_run_reports_missing_file_with_exit_2(tmp_path: Path) -> None:
    """A pipeline file that does not exist is a usage error naming the path."""
    done = riprap_cli("run", "nope.py", cwd=tmp_path)
    assert 2 == done.returncode
    assert "riprap: pipeline file: 'nope.py' does not exist" in done.stderr


def test_load_pipeline_names_what_is_wrong(tmp_path: Path) -> None:
    """load_pipeline explains a missing name and a value that is not a pipeline."""
    script = tmp_path / "p.py"
    script.write_text("thing = 3\n")
    with pytest.raises(riprap.ConfigError, match=r"defines no 'pipeline'"):
        load_pipeline(str(script))
    with pytest.raises(riprap.ConfigError, match=r"p.py:thing is int, not a Pipeline"):
        load_pipeline(f"{script}:thing")


def test_load_pipeline_accepts_a_factory(tmp_path: Path) -> None:
    """A factory function named after the colon is called to build the pipeline."""
    script = tmp_path / "p.py"
    script.write_text("import riprap\ndef make():\n    return riprap.Pipeline('made')\n")
    assert "made" == load_pipeline(f"{script}:make").name


@pytest.mark.slow
def test_failed_run_exits_1_with_the_position(tmp_path: Path) -> None:
    """A stage bug makes `riprap run` exit 1 and print stage, partition and offset."""
    (tmp_path / "bug.py").write_text(
        textwrap.dedent(
            """
            import riprap
            from riprap.connectors.memory import IterableSource, MemorySink
            pipeline = (
                riprap.Pipeline("bug", checkpoint=riprap.checkpoints.MemoryCheckpoints())
                .source(IterableSource("in", list(range(10))))
                .map("div", lambda v: 1 // (v - 7))
                .sink(MemorySink())
            )
            """
        )
    )
    done = riprap_cli("run", "bug.py", cwd=tmp_path)
    assert 1 == done.returncode
    assert "stage 'div' failed at memory@7: ZeroDivisionError" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


PORT_PIPELINE = """
import riprap
from riprap.connectors.files import JsonLinesSink, JsonLinesSource

pipeline = (
    riprap.Pipeline("ported")
    .source(JsonLinesSource("in.jsonl"))
    .sink(JsonLinesSink("out/out.jsonl"))
)
"""


def test_run_with_metrics_port_in_use_exits_2_before_reading(tmp_path: Path) -> None:
    """A --metrics-port in use is one line naming health.port, exit 2, and nothing is created."""
    (tmp_path / "p.py").write_text(PORT_PIPELINE)
    (tmp_path / "in.jsonl").write_text('{"n": 1}\n')
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = riprap_cli("run", "p.py", "--metrics-port", str(port), cwd=tmp_path)
    expected = (2, f"riprap: health.port: 127.0.0.1:{port} is in use\n", ["in.jsonl", "p.py"])
    assert expected == (done.returncode, done.stderr, sorted(p.name for p in tmp_path.iterdir()))


def test_sync_step_returning_a_coroutine_exits_1_naming_the_step(tmp_path: Path) -> None:
    """A lambda around an async function stops `riprap run` with exit 1 and says what to do."""
    (tmp_path / "p.py").write_text(
        textwrap.dedent(
            """
            import riprap
            from riprap.connectors.memory import IterableSource, MemorySink

            async def double(v):
                return 2 * v

            pipeline = (
                riprap.Pipeline("wrapped", checkpoint=riprap.checkpoints.MemoryCheckpoints())
                .source(IterableSource("in", [1, 2]))
                .map("double", lambda v: double(v))
                .sink(MemorySink())
            )
            """
        )
    )
    done = riprap_cli("run", "p.py", "--quiet", cwd=tmp_path)
    message = (
        "stage 'double' failed at memory@0: ConfigError: map('double'): the function is sync "
        "but returned coroutine object; pass an async function (async def) so that riprap awaits it"
    )
    output = done.stdout + done.stderr
    assert (1, True, False) == (done.returncode, message in done.stdout, "Traceback" in output)
