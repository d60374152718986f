"""The ``riprap`` command explains itself: version, plain help, reports on stdout, JSON lines."""

from __future__ import annotations

import importlib.metadata
import logging
import re
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

import riprap
import riprap.checkpoints
import riprap.cli
import riprap.deadletters
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.observability import Redactor

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

COMMANDS = [
    [],
    ["run"],
    ["demo"],
    ["dlq"],
    ["dlq", "inspect"],
    ["dlq", "purge"],
    ["dlq", "replay"],
    ["checkpoint"],
    ["checkpoint", "show"],
    ["checkpoint", "reset"],
    ["checkpoint", "set"],
    ["backfill"],
    ["s3"],
    ["s3", "requeue"],
]

BUG = """
import riprap
from riprap.connectors.memory import IterableSource, MemorySink


def divide(value):
    return 10 // (value - 7)


pipeline = (
    riprap.Pipeline("bug", checkpoint=riprap.checkpoints.MemoryCheckpoints())
    .source(IterableSource("in", list(range(10))))
    .map("div", divide)
    .sink(MemorySink())
)
"""


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


@pytest.fixture(autouse=True)
def keep_root_logging() -> Iterator[None]:
    """``riprap.cli.main`` sets up the root logger for the command; undo it after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def help_of(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The ``--help`` text of ``riprap COMMAND``."""
    with pytest.raises(SystemExit) as exited:
        riprap.cli.main([*command, "--help"])
    assert 0 == exited.value.code
    return capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``riprap --version`` prints the installed version and exits 0."""
    with pytest.raises(SystemExit) as exited:
        riprap.cli.main(["--version"])
    expected = (0, f"riprap {importlib.metadata.version('riprap')}\n")
    assert expected == (exited.value.code, capsys.readouterr().out)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "riprap")
def test_help_has_no_markup(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """No help text shows reStructuredText: no double backquotes, roles or directives."""
    text = help_of(command, capsys)
    marks = [mark for mark in ("``", ":class:", ":func:", ":meth:") if mark in text]
    directives = re.findall(r"^\s*\.\. \S+::", text, re.MULTILINE)
    assert ([], []) == (marks, directives)


def test_dlq_help_names_replay(capsys: pytest.CaptureFixture[str]) -> None:
    """``riprap dlq --help`` lists replay and says what it does; ``riprap --help`` mentions it."""
    dlq, top = help_of(["dlq"], capsys), help_of([], capsys)
    assert (True, True, True) == (
        "replay" in dlq.split("options:")[0].split("positional arguments:")[-1],
        "riprap dlq replay PATH --pipeline fix.py" in dlq,
        "inspect, purge and replay dead letters" in top,
    )


@pytest.mark.slow
def test_a_failed_run_prints_its_report_on_stdout(tmp_path: Path) -> None:
    """A failing run prints the report with step, record and the user's line, all on stdout."""
    (tmp_path / "bug.py").write_text(textwrap.dedent(BUG))
    done = riprap_cli("run", "-q", "bug.py", cwd=tmp_path)
    expected = [
        "pipeline bug: failed",
        "  failed step     div",
        "  failed record   memory@7",
        "  in your code:",
        '    File "bug.py", line 7, in divide',
        "      return 10 // (value - 7)",
        "  (riprap -v shows the whole traceback)",
    ]
    lines = done.stdout.splitlines()
    assert (1, [], False) == (
        done.returncode,
        [line for line in expected if line not in lines],
        "records in" in done.stderr or "in your code" in done.stderr,
    )


@pytest.mark.slow
def test_verbose_adds_the_whole_chain(tmp_path: Path) -> None:
    """With -v the report carries the whole traceback, the engine's frames included."""
    (tmp_path / "bug.py").write_text(textwrap.dedent(BUG))
    done = riprap_cli("-v", "run", "-q", "bug.py", cwd=tmp_path)
    assert (1, True, True, True) == (
        done.returncode,
        "Traceback (most recent call last)" in done.stdout,
        "ZeroDivisionError: integer division or modulo by zero" in done.stdout,
        "riprap.PipelineError: pipeline 'bug' stopped" in done.stdout,
    )


@pytest.mark.slow
def test_json_log_format_writes_only_json(tmp_path: Path) -> None:
    """Every line on stdout and stderr is JSON; the report is one object with the failure."""
    (tmp_path / "bug.py").write_text(textwrap.dedent(BUG))
    done = riprap_cli("--log-format", "json", "run", "bug.py", cwd=tmp_path)
    (report,) = [orjson.loads(line) for line in done.stdout.splitlines()]
    logs = [orjson.loads(line) for line in done.stderr.splitlines()]  # each line parses
    failure = report["report"]["failure"]
    assert (1, "riprap.report", "failed", "div", 7, "divide", False) == (
        done.returncode,
        report["logger"],
        report["report"]["outcome"],
        failure["step"],
        failure["offset"],
        failure["frame"]["function"],
        any(log["logger"] == "riprap.report" for log in logs),
    )


@pytest.mark.slow
def test_json_usage_error_is_json(tmp_path: Path) -> None:
    """A usage error under --log-format json is one JSON line on stderr, exit 2."""
    done = riprap_cli("--log-format", "json", "run", "nope.py", cwd=tmp_path)
    (line,) = done.stderr.splitlines()
    event = orjson.loads(line)
    expected = (2, "", "error", "pipeline file: 'nope.py' does not exist")
    assert expected == (done.returncode, done.stdout, event["level"], event["message"])


def letter(offset: int, *, stage: str, at: float) -> riprap.deadletters.DeadLetter:
    """A dead letter of ``stage`` last failed at ``at``."""
    return riprap.deadletters.DeadLetter.create(
        pipeline="orders",
        stage=stage,
        error=riprap.DataError("bad order"),
        record=riprap.Record(f'{{"id": {offset}}}'.encode(), partition="in", offset=offset),
        source="in",
        attempts=1,
        first_failure_at=at,
        last_failure_at=at,
        config_hash="x",
        redactor=Redactor(),
    )


def write_letters(path: Path, letters: list[riprap.deadletters.DeadLetter]) -> None:
    """Store ``letters`` in a JSON Lines dead-letter file."""

    async def fill() -> None:
        sink = riprap.deadletters.JsonLinesDeadLetters(path)
        await sink.open()
        await sink.write(letters)
        await sink.aclose()

    anyio.run(fill)


def test_purge_dry_run_counts_and_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run says how many letters would go and leaves the store as it was."""
    store = tmp_path / "dlq.jsonl"
    write_letters(store, [letter(i, stage="parse", at=1.0 if i < 3 else 4e9) for i in range(5)])
    before = store.read_bytes()
    code = riprap.cli.main(["dlq", "purge", str(store), "--older-than", "1d", "--dry-run"])
    out = capsys.readouterr().out
    assert (0, True, True, before) == (
        code,
        "dry run, nothing deleted: would remove 3 dead letters" in out,
        "2 newer kept" in out,
        store.read_bytes(),
    )


FIX = """
import orjson
import riprap
from riprap.connectors.memory import IterableSource
from riprap.connectors.sqlite import SqliteSink

pipeline = (
    riprap.Pipeline("orders", checkpoint=riprap.checkpoints.SqliteCheckpoints("ckpt.db"))
    .source(IterableSource("unused", []))
    .map("parse", orjson.loads)
    .sink(SqliteSink("fixed.db", table="orders", key="id"))
)
"""


def replay(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``riprap dlq replay dlq.jsonl --pipeline fix.py ARGS``, which must succeed."""
    done = riprap_cli(
        "dlq", "replay", "dlq.jsonl", "--pipeline", "fix.py", "-q", *args, cwd=tmp_path
    )
    assert 0 == done.returncode, done.stderr
    return done


def replayed(done: subprocess.CompletedProcess[str]) -> int:
    """The records a replay read, from its report."""
    (line,) = [x for x in done.stdout.splitlines() if x.strip().startswith("records in")]
    return int(line.split()[-1].replace(",", ""))


@pytest.mark.slow
def test_a_filtered_replay_leaves_the_rest_for_a_later_replay(tmp_path: Path) -> None:
    """Letters a filter left out go in a later replay; those sent before are skipped, and said."""
    stages = ["parse", "enrich", "parse", "enrich", "enrich"]
    write_letters(
        tmp_path / "dlq.jsonl", [letter(i, stage=s, at=1.0) for i, s in enumerate(stages)]
    )
    (tmp_path / "fix.py").write_text(textwrap.dedent(FIX))
    only_parse = replay(tmp_path, "--stage", "parse")
    everything = replay(tmp_path)
    again = replay(tmp_path)
    assert (2, 3, 0) == (replayed(only_parse), replayed(everything), replayed(again))
    assert "left 3 letters out: they do not match the filter" in only_parse.stderr
    assert "skipped 2 letters already replayed under 'orders.replay'" in everything.stderr
    assert "skipped 5 letters already replayed under 'orders.replay'" in again.stderr


JOINING = """
import anyio
import riprap
from riprap import SourceBatch
from riprap.connectors.memory import MemorySink


class Joining:
    '''Like a Kafka source while its group join goes on: lag known, no partition yet.'''

    name = "joining"

    async def open(self, context):
        self.reads = 0

    async def read(self, max_records):
        self.reads += 1
        if self.reads == 1:
            await anyio.sleep(0.8)  # long enough for the first progress line (0.5s)
            return SourceBatch("p0", [], start=0)
        return None

    def lag(self):
        return {}

    async def aclose(self):
        pass


pipeline = (
    riprap.Pipeline("joining", checkpoint=riprap.checkpoints.MemoryCheckpoints())
    .source(Joining())
    .sink(MemorySink())
)
"""


@pytest.mark.slow
def test_progress_says_the_source_waits_for_partitions(tmp_path: Path) -> None:
    """While the source knows no partition, the progress line says it is waiting for them."""
    (tmp_path / "joining.py").write_text(textwrap.dedent(JOINING))
    done = riprap_cli("--log-format", "json", "run", "joining.py", cwd=tmp_path)
    progress = [
        event["message"]
        for event in map(orjson.loads, done.stderr.splitlines())
        if event["logger"] == "riprap.progress"
    ]
    assert (0, True) == (
        done.returncode,
        any("waiting for partitions" in line for line in progress),
    ), done.stderr


MISSING = """
import riprap
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.memory import MemorySink

pipeline = (
    riprap.Pipeline("missing", checkpoint=riprap.checkpoints.MemoryCheckpoints())
    .source(JsonLinesSource("nope.jsonl"))
    .sink(MemorySink())
)
"""


@pytest.mark.slow
def test_a_run_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    """A source that cannot open is an error line on stderr, no traceback, exit 1."""
    (tmp_path / "missing.py").write_text(textwrap.dedent(MISSING))
    done = riprap_cli("run", "-q", "missing.py", cwd=tmp_path)
    expected = (1, "", True, False)
    assert expected == (
        done.returncode,
        done.stdout,
        "riprap: FileNotFoundError: [Errno 2] No such file or directory: 'nope.jsonl'"
        in done.stderr,
        "Traceback" in done.stderr,
    ), done.stderr


def test_json_log_format_makes_dlq_and_checkpoint_answers_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under --log-format json, inspect, a dry-run purge and checkpoint show print JSON only."""
    store, checkpoints = tmp_path / "dlq.jsonl", tmp_path / "checkpoints.db"
    write_letters(store, [letter(i, stage="parse", at=1.0) for i in range(2)])
    pipeline = (
        riprap.Pipeline("shown", checkpoint=riprap.checkpoints.SqliteCheckpoints(checkpoints))
        .source(IterableSource("in", [1, 2]))
        .sink(MemorySink())
    )
    riprap.run(pipeline, handle_signals=False)
    json_cli = ["--log-format", "json"]
    codes = [
        riprap.cli.main([*json_cli, "dlq", "inspect", str(store)]),
        riprap.cli.main([*json_cli, "dlq", "purge", str(store), "--older-than", "1d", "--dry-run"]),
        riprap.cli.main([*json_cli, "checkpoint", "show", str(checkpoints)]),
    ]
    inspected, purged, shown = map(orjson.loads, capsys.readouterr().out.splitlines())
    assert ([0, 0, 0], 2, True, "shown") == (
        codes,
        inspected["total"],
        "dry run, nothing deleted: would remove 2 dead letters" in purged["message"],
        shown["pipeline"],
    )
