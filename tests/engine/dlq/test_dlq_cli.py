"""``riprap dlq inspect`` and ``riprap dlq purge``, called through their argument parser."""

from __future__ import annotations

import stat
import time
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from riprap import DecodeError
from riprap.deadletters import JsonLinesDeadLetters, SqliteDeadLetters, read_dead_letters

from ._letters import make_letter
from ._replay import parse_dlq, riprap_dlq, run_dlq, with_fix

if TYPE_CHECKING:
    from pathlib import Path

    from riprap.deadletters import DeadLetter

DAY = 86_400.0


async def store(path: Path, letters: list[DeadLetter]) -> None:
    """Write ``letters`` to a store at ``path`` (SQLite for ``.db``, else JSON Lines)."""
    sink = SqliteDeadLetters(path) if path.suffix == ".db" else JsonLinesDeadLetters(path)
    await sink.open()
    await sink.write(letters)
    await sink.aclose()


def sample() -> list[DeadLetter]:
    """Three parse failures (two decode errors) and one enrich failure, one a day apart."""
    now = time.time()
    return [
        make_letter(10, stage="parse", error=DecodeError("bad json"), at=now - 3 * DAY),
        make_letter(11, stage="parse", error=DecodeError("bad json"), at=now - 2 * DAY),
        make_letter(12, stage="parse", at=now - DAY),
        make_letter(
            13,
            stage="enrich",
            error=TimeoutError("user a@b.io timed out"),
            reason="retries_exhausted",
            value=b"SECRET-PAYLOAD",
            at=now,
        ),
    ]


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    """A JSON Lines store holding :func:`sample`."""
    path = tmp_path / "dlq.jsonl"
    anyio.run(store, path, sample())
    return path


def test_inspect_counts_and_latest(jsonl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Counts by stage, error type and reason come first, then the latest entries."""
    assert 0 == run_dlq("inspect", str(jsonl), "--show", "1")
    out = capsys.readouterr().out.splitlines()
    assert f"{jsonl}: 4 dead letters (0 repeats folded)" == out[0]
    assert ["by stage:", "  parse   3", "  enrich  1"] == out[1:4]
    assert "by error type:" == out[4]
    assert ["by reason:", "  decode_error       2"] == out[8:10]
    assert ["latest 1:"] == out[12:13]
    assert " enrich  retries_exhausted  TimeoutError  orders.jsonl@13" in out[13]
    assert "value=14 bytes" in out[13]
    assert "    user [REDACTED:email] timed out" == out[14]
    assert 15 == len(out)


def test_inspect_never_prints_values(jsonl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Neither the text nor the JSON output contains a payload, only its size."""
    run_dlq("inspect", str(jsonl))
    run_dlq("inspect", str(jsonl), "--json")
    assert "SECRET-PAYLOAD" not in capsys.readouterr().out


def test_inspect_json_with_filters(jsonl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` prints one object; the filters narrow counts and entries alike."""
    assert 0 == run_dlq(
        "inspect", str(jsonl), "--stage", "parse", "--error-type", "DecodeError", "--json"
    )
    report = orjson.loads(capsys.readouterr().out)
    assert (2, {"parse": 2}, {"decode_error": 2}) == (
        report["total"],
        report["by_stage"],
        report["by_reason"],
    )
    assert [10, 11] == [entry["offset"] for entry in report["latest"]]
    assert {"key", "value", "headers", "traceback"}.isdisjoint(report["latest"][0])
    assert 12 == report["latest"][0]["value_size"]


def test_inspect_since(jsonl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--since`` takes an ISO time or a duration ago."""
    run_dlq("inspect", str(jsonl), "--since", "36h", "--json")
    assert 2 == orjson.loads(capsys.readouterr().out)["total"]
    run_dlq("inspect", str(jsonl), "--since", "2000-01-01T00:00:00Z", "--json")
    assert 4 == orjson.loads(capsys.readouterr().out)["total"]


@pytest.mark.parametrize("name", ["dlq.jsonl", "dlq.db"])
def test_purge_removes_only_old_letters(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--older-than 36h`` deletes the two letters older than that and keeps the rest."""
    path = tmp_path / name
    letters = sample()
    anyio.run(store, path, letters)
    assert 0 == run_dlq("purge", str(path), "--older-than", "36h")
    assert capsys.readouterr().out.startswith(
        f"{path}: removed 2 dead letters (0 repeats folded) last failed before"
    )
    assert letters[2:] == list(read_dead_letters(path))
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)


def test_purge_rewrites_rotated_files(tmp_path: Path) -> None:
    """Old letters go from every rotated file; files left untouched keep their letters."""
    path = tmp_path / "dlq.jsonl"
    letters = sample()

    async def write_rotating() -> None:
        sink = JsonLinesDeadLetters(path, max_bytes=1, backups=5)
        await sink.open()
        for letter in letters:
            await sink.write([letter])
        await sink.aclose()

    anyio.run(write_rotating)
    assert 0 == run_dlq("purge", str(path), "--older-than", "1d")
    assert letters[3:] == list(read_dead_letters(path))
    assert 0o600 == stat.S_IMODE((tmp_path / "dlq.jsonl.3").stat().st_mode)


def test_purge_drops_an_unfinished_last_line(jsonl: Path) -> None:
    """A line a crash cut short goes with the purge, as the next writer would cut it."""
    with jsonl.open("ab") as file:
        file.write(b'{"version":1,"id":')
    assert 0 == run_dlq("purge", str(jsonl), "--older-than", "30d")
    assert jsonl.read_bytes().endswith(b"}\n")
    assert 4 == len(list(read_dead_letters(jsonl)))


def test_purge_refuses_while_a_sink_writes(jsonl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A purge cannot rewrite files a sink has open; it fails and changes nothing."""

    async def purge_while_open() -> int:
        sink = JsonLinesDeadLetters(jsonl)
        await sink.open()
        try:
            return run_dlq("purge", str(jsonl), "--older-than", "0s")
        finally:
            await sink.aclose()

    assert 1 == anyio.run(purge_while_open)
    assert "another dead-letter writer or purge holds" in capsys.readouterr().err
    assert 4 == len(list(read_dead_letters(jsonl)))


def test_missing_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Inspecting a path with nothing stored is reported on stderr with exit code 2."""
    assert 2 == run_dlq("inspect", str(tmp_path / "none.jsonl"))
    assert "no dead letters stored there" in capsys.readouterr().err


def test_corrupt_store_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt line is reported with its file and line number, exit code 1."""
    path = tmp_path / "dlq.jsonl"
    path.write_bytes(b"{}\n")
    assert 1 == run_dlq("inspect", str(path))
    assert f"{path}:1: dead letter: unsupported envelope version None" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90.0), ("15m", 900.0), ("1.5h", 5400.0), ("7d", 604800.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations take a number and one of the units s, m, h, d."""
    assert seconds == parse_dlq("purge", "x.jsonl", f"--older-than={text}").older_than


@pytest.mark.parametrize("text", ["7", "7w", "d", "-1d", "1d2h"])
def test_bad_duration_is_a_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An unreadable ``--older-than`` stops argument parsing with exit code 2."""
    with pytest.raises(SystemExit) as info:
        parse_dlq("purge", "x.jsonl", f"--older-than={text}")
    assert (2, True) == (info.value.code, "invalid duration" in capsys.readouterr().err)


def test_replay_warns_of_a_filter_no_letter_matches(jsonl: Path) -> None:
    """A typo in ``--stage`` or ``--reason`` would replay nothing and end well: it is warned of,
    naming the value most likely meant and the values the store holds."""
    workdir = with_fix(jsonl.parent)
    done = riprap_dlq(
        "replay", str(jsonl), "--pipeline", "fix.py", "-q", "--stage", "enrih",
        "--reason", "retries_exhaused", cwd=workdir,
    )  # fmt: skip
    err = " ".join(done.stderr.split())
    assert (done.returncode, "records in 0" in " ".join(done.stdout.split())) == (0, True)
    assert (
        f"no letter in {jsonl} has stage 'enrih' (did you mean 'enrich'?); its stages: "
        "enrich, parse"
    ) in err
    assert f"no letter in {jsonl} has reason 'retries_exhaused' (did you mean " in err
    matching = riprap_dlq(
        "replay", str(jsonl), "--pipeline", "fix.py", "-q", "--stage", "parse", cwd=workdir
    )
    assert "no letter in" not in matching.stderr


def test_inspect_warns_of_a_filter_no_letter_matches(
    jsonl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ "0 dead letters" for a misspelt stage would read as "no failures there": the value is
    warned of, with the one most likely meant."""
    assert 0 == run_dlq("inspect", str(jsonl), "--stage", "pars", "--reason", "decode_error")
    out, err = capsys.readouterr()
    assert out.startswith(f"{jsonl}: 0 dead letters")
    assert [line for line in err.splitlines() if "no letter in" in line] == [
        f"no letter in {jsonl} has stage 'pars' (did you mean 'parse'?); its stages: enrich, parse"
    ]


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_replay_names_a_time_it_cannot_read(jsonl: Path, option: str) -> None:
    """A usage error naming the option and the forms it takes, not a traceback."""
    done = riprap_dlq(
        "replay", str(jsonl), "--pipeline", "fix.py", option, "yesterday", cwd=jsonl.parent
    )
    assert (done.returncode, "Traceback" in done.stderr) == (2, False)
    assert f"argument {option}: invalid time 'yesterday': use ISO 8601" in done.stderr


def test_a_filtered_replay_of_a_missing_store_fails_as_an_unfiltered_one(tmp_path: Path) -> None:
    """The look for unmatched filter values leaves a missing store to the replay's own error."""
    workdir = with_fix(tmp_path)
    done = riprap_dlq(
        "replay", "missing.jsonl", "--pipeline", "fix.py", "--reason", "x", cwd=workdir
    )
    assert (done.returncode, "Traceback" in done.stderr) == (1, False)
    assert "no dead letters stored here" in done.stderr
