"""``riprap run --workers N``: real worker processes sharing files, restarts, signals, refusals.

Each test runs the pipelines of ``_workers_pipeline.py`` in the test's
directory through the ``riprap`` command (``python -m riprap.cli``), with
every wait bounded (see ``_subprocesses``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

import riprap

from ._subprocesses import DEADLINE, load_checkpoint, query, spawn, wait_for_child
from ._workers_pipeline import CHECKPOINTS, DATABASE, GO, LOAD, NAME, TABLE

PIPELINES = Path(__file__).with_name("_workers_pipeline.py")
FILES = 6
LINES = 500


def write_input(folder: Path) -> None:
    """``FILES`` JSON Lines files of ``LINES`` records each, ids ``<file>-<line>``."""
    for f in range(FILES):
        lines = (orjson.dumps({"id": f"{f}-{n}", "n": n}) + b"\n" for n in range(LINES))
        (folder / f"in-{f}.jsonl").write_bytes(b"".join(lines))


def riprap_run(factory: str, *options: str) -> list[str]:
    """The command line of ``riprap run _workers_pipeline.py:factory [options]``."""
    return [
        sys.executable,
        "-m",
        "riprap.cli",
        "run",
        "--quiet",
        f"{PIPELINES}:{factory}",
        *options,
    ]


def rows(folder: Path) -> list[tuple[str, str]]:
    """Every row of the output table, by id."""
    return [
        (str(i), str(v))
        for i, v in query(folder / DATABASE, f"SELECT id, value FROM {TABLE} ORDER BY id")
    ]


def started(folder: Path) -> list[int]:
    """The pids of the worker processes that reached their first record."""
    return sorted(int(path.name.partition("-")[2]) for path in folder.glob("started-*"))


def report_value(text: str, label: str) -> str:
    """The value on the report line ``label`` (the last such line: the aggregate's)."""
    found = re.findall(rf"^\s+{label}\s+([\w,.]+)$", text, re.MULTILINE)
    if not found:
        pytest.fail(f"no {label!r} line in:\n{text}")
    return str(found[-1])


def run_to_end(folder: Path, factory: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``riprap run`` in ``folder`` to the end (bounded)."""
    return subprocess.run(
        riprap_run(factory, *options),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def one_and_two_workers(
    tmp_path: Path, factory: str
) -> tuple[list[tuple[str, str]], subprocess.CompletedProcess[str]]:
    """Run ``factory`` over the same input with one worker and with two.

    Returns the rows of one worker (equal to those of two) and the two
    workers' run.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        write_input(folder)
    single = run_to_end(one, factory)
    double = run_to_end(two, factory, "--workers", "2")
    assert (0, 0) == (single.returncode, double.returncode), double.stderr
    expected = rows(one)
    assert FILES * LINES == len(expected)
    assert expected == rows(two)
    return expected, double


def test_two_workers_write_what_one_writes(tmp_path: Path) -> None:
    """Two workers over six files write exactly the rows one worker writes."""
    _, double = one_and_two_workers(tmp_path, "plain")
    two = tmp_path / "two"
    aggregate = double.stdout
    assert f"pipeline {NAME}: completed" == aggregate.splitlines()[0]
    assert (f"{FILES * LINES:,}", "2", "0") == (
        report_value(aggregate, "records in"),
        report_value(aggregate, "workers"),
        report_value(aggregate, "restarts"),
    ), double.stderr
    # Each worker kept its own positions: together they cover every file, once.
    shares = [load_checkpoint(two / CHECKPOINTS, f"{NAME}.worker-{i}-of-2") for i in range(2)]
    positions = [dict(c.positions) if c else {} for c in shares]
    assert set() == set(positions[0]) & set(positions[1])
    expected_positions = {f"in-{f}.jsonl": LINES for f in range(FILES)}
    assert expected_positions == positions[0] | positions[1]


def test_two_workers_keep_keyed_state_as_one_does(tmp_path: Path) -> None:
    """Keyed state lives with its file, so two workers count exactly what one counts."""
    expected, _ = one_and_two_workers(tmp_path, "keyed")
    last = {i: orjson.loads(v)["seen"] for i, v in expected}
    same_key = [n for n in range(LINES) if n % 7 == (LINES - 1) % 7]
    assert len(same_key) == last[f"0-{LINES - 1}"]


def test_two_workers_split_each_source_of_a_merge(tmp_path: Path) -> None:
    """Two merged file sources under two workers: the rows of one worker, positions by name."""
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        write_input(folder)
    single = run_to_end(one, "merged")
    double = run_to_end(two, "merged", "--workers", "2")
    assert (0, 0) == (single.returncode, double.returncode), double.stderr
    assert FILES * LINES == len(rows(one))
    assert rows(one) == rows(two)
    shares = [load_checkpoint(two / CHECKPOINTS, f"{NAME}.worker-{i}-of-2") for i in range(2)]
    positions = [dict(c.positions) if c else {} for c in shares]
    assert set() == set(positions[0]) & set(positions[1])
    expected = {f"early/in-{f}.jsonl": LINES for f in range(3)}
    expected |= {f"late/in-{f}.jsonl": LINES for f in range(3, FILES)}
    assert expected == positions[0] | positions[1]


def test_changing_the_worker_count_of_a_file_pipeline_is_refused(tmp_path: Path) -> None:
    """Positions of two workers are not reused by three: the run is refused, naming them."""
    write_input(tmp_path)
    assert 0 == run_to_end(tmp_path, "plain", "--workers", "2").returncode
    again = run_to_end(tmp_path, "plain", "--workers", "3")
    assert 2 == again.returncode
    assert f"positions of pipeline '{NAME}' under '{NAME}.worker-0-of-2'" in again.stderr


@pytest.mark.parametrize(
    ("factory", "problem"),
    [
        ("stateful", "pipeline 'orders' has a stateful stage 'unique'"),
        ("unsplittable", r"source 'numbers' \(_Numbers\) cannot be split among 2 workers"),
        (
            "merged_unsplittable",
            r"source 'numbers' of the merge \(_Numbers\) cannot be split among 2 workers",
        ),
    ],
)
def test_pipelines_that_cannot_be_shared_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str, problem: str
) -> None:
    """A stateful stage or an unsplittable source is refused before any worker starts."""
    monkeypatch.chdir(tmp_path)
    write_input(tmp_path)
    with pytest.raises(riprap.ConfigError, match=problem):
        riprap.run_workers(f"{PIPELINES}:{factory}", workers=2)
    assert [] == started(tmp_path)


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    """SIGKILL one of two workers mid-run: it is restarted and every row is written once."""
    write_input(tmp_path)
    with spawn(riprap_run("gated", "--workers", "2"), tmp_path, "run") as proc:
        wait_for_child(lambda: len(started(tmp_path)) == 2, proc, "two workers at work")
        victim = started(tmp_path)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for_child(lambda: len(started(tmp_path)) == 3, proc, "the restarted worker")
        (tmp_path / GO).touch()
        returncode = proc.wait(timeout=DEADLINE)
    out = (tmp_path / "run.out").read_text()
    assert 0 == returncode, (tmp_path / "run.err").read_text()

    written = rows(tmp_path)
    expected_ids = sorted(f"{f}-{n}" for f in range(FILES) for n in range(LINES))
    assert expected_ids == [row_id for row_id, _ in written]
    assert ("completed", "1") == (
        out.splitlines()[0].rpartition(" ")[2],
        report_value(out, "restarts"),
    )


@pytest.mark.slow
def test_sigterm_stops_every_worker_with_a_final_checkpoint(tmp_path: Path) -> None:
    """SIGTERM to the supervisor drains both workers; each checkpoints exactly what it wrote."""
    write_input(tmp_path)
    with spawn(riprap_run("gated", "--workers", "2"), tmp_path, "run") as proc:
        wait_for_child(lambda: len(started(tmp_path)) == 2, proc, "two workers at work")
        proc.send_signal(signal.SIGTERM)
        err = tmp_path / "run.err"
        wait_for_child(
            lambda: err.read_text().count("SIGTERM received") == 2, proc, "both workers stopping"
        )
        (tmp_path / GO).touch()  # the records held in flight may finish: the drain ends
        returncode = proc.wait(timeout=DEADLINE)
    out = (tmp_path / "run.out").read_text()
    assert 0 == returncode, (tmp_path / "run.err").read_text()
    assert f"pipeline {NAME}: stopped" == out.splitlines()[0]

    written = {row_id for row_id, _ in rows(tmp_path)}
    for i in range(2):
        checkpoint = load_checkpoint(tmp_path / CHECKPOINTS, f"{NAME}.worker-{i}-of-2")
        assert checkpoint is not None
        assert checkpoint.positions, f"worker {i} checkpointed nothing"
        # A file's checkpointed position is exactly the count of its rows written.
        for partition, position in checkpoint.positions.items():
            f = partition.removeprefix("in-").removesuffix(".jsonl")
            assert position == sum(1 for row_id in written if row_id.startswith(f"{f}-"))

    # The next run goes on from there and completes the output.
    finish = run_to_end(tmp_path, "plain", "--workers", "2")
    assert 0 == finish.returncode, finish.stderr
    assert FILES * LINES == len(rows(tmp_path))


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaps counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


@pytest.mark.slow
def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in listed.split()]


@pytest.mark.slow
def test_workers_whose_supervisor_died_before_they_looked_stop_too(tmp_path: Path) -> None:
    """The supervisor is killed while its workers are still loading the pipeline (before
    they could see their parent): they learn its pid from it, see it gone, and end."""
    write_input(tmp_path)
    with spawn(riprap_run("slow_to_load", "--workers", "2"), tmp_path, "run") as proc:
        wait_for_child(lambda: len(children(proc.pid)) == 2, proc, "two workers started")
        workers = children(proc.pid)
        proc.kill()
        proc.wait(timeout=DEADLINE)
    (tmp_path / LOAD).touch()  # the workers load the pipeline only now, orphaned already
    err = tmp_path / "run.err"
    deadline = time.monotonic() + DEADLINE
    while err.read_text().count("SIGTERM received") < 2:  # the gate holds them until then
        if time.monotonic() > deadline:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the orphaned workers never stopped:\n{err.read_text()[-2000:]}")
        time.sleep(0.05)
    (tmp_path / GO).touch()
    while not all(map(gone, workers)):
        if time.monotonic() > deadline:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail("the orphaned workers never ended")
        time.sleep(0.05)


def test_workers_of_a_killed_supervisor_stop_gracefully(tmp_path: Path) -> None:
    """SIGKILL the supervisor: its workers notice, drain and checkpoint what they wrote."""
    write_input(tmp_path)
    with spawn(riprap_run("gated", "--workers", "2"), tmp_path, "run") as proc:
        wait_for_child(lambda: len(started(tmp_path)) == 2, proc, "two workers at work")
        workers = started(tmp_path)
        proc.kill()
        proc.wait(timeout=DEADLINE)
    err = tmp_path / "run.err"
    deadline = time.monotonic() + DEADLINE
    while err.read_text().count("SIGTERM received") < 2:
        assert time.monotonic() < deadline, f"the workers never stopped:\n{err.read_text()}"
        time.sleep(0.05)
    (tmp_path / GO).touch()
    while not all(map(gone, workers)):
        assert time.monotonic() < deadline, "the workers never ended"
        time.sleep(0.05)

    written = {row_id for row_id, _ in rows(tmp_path)}
    checkpointed = 0
    for i in range(2):
        checkpoint = load_checkpoint(tmp_path / CHECKPOINTS, f"{NAME}.worker-{i}-of-2")
        checkpointed += sum(checkpoint.positions.values()) if checkpoint else 0
    assert len(written) == checkpointed > 0
