"""``riprap rollback``: a Delta sink's table and its pipeline's positions moved back together."""

from __future__ import annotations

import runpy
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from deltalake import DeltaTable

import riprap.cli
from riprap.checkpoints import SqliteCheckpoints

if TYPE_CHECKING:
    from pathlib import Path

PIPELINES = """
import riprap
from riprap.connectors.files import JsonLinesSource, parse_json_line
from riprap.connectors.lake import DeltaSink
from riprap.connectors.memory import MemorySink


def priced(factor, state):
    def price(line):
        order = parse_json_line(line)
        return {**order, "cents": order["amount"] * factor}

    return (
        riprap.Pipeline("orders-to-lake", checkpoint_path=state, batch_size=7)
        .source(JsonLinesSource("orders.jsonl"))
        .map("price", price)
    )


def fixed():
    return priced(100, "state.db").sink(DeltaSink("table", new_columns="refuse", max_rows=20))


def buggy():
    return priced(10, "state.db").sink(DeltaSink("table", new_columns="refuse", max_rows=20))


def clean():
    return priced(100, "clean.db").sink(DeltaSink("clean", new_columns="refuse", max_rows=20))


def logged():
    return priced(100, "state.db").fan_out(
        lake=riprap.Branch().sink(DeltaSink("table", new_columns="refuse")),
        log=riprap.Branch().sink(MemorySink("log")),
    )


def two(factor=100):
    return priced(factor, "state.db").fan_out(
        a=riprap.Branch().sink(DeltaSink("ta", new_columns="refuse", name="a", max_rows=20)),
        b=riprap.Branch().sink(DeltaSink("tb", new_columns="refuse", name="b", max_rows=30)),
    )


def two_buggy():
    return two(10)
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding the pipelines file, the working directory of the test."""
    (tmp_path / "p.py").write_text(textwrap.dedent(PIPELINES))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_orders(workdir: Path, first: int, last: int) -> None:
    """Append orders ``first`` to ``last`` to the input file."""
    with (workdir / "orders.jsonl").open("ab") as out:
        out.writelines(orjson.dumps({"id": i, "amount": i % 7}) + b"\n" for i in range(first, last))


def run(workdir: Path, name: str) -> None:
    """One run of the pipeline ``name`` of the pipelines file, to completion."""
    pipeline = runpy.run_path(str(workdir / "p.py"))[name]()
    assert "completed" == anyio.run(pipeline.run).outcome


def rollback(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``riprap rollback p.py:fixed ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "riprap.cli", "rollback", "p.py:fixed", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rows(table: Path) -> list[dict[str, Any]]:
    """The table's rows, sorted by id."""
    found: list[dict[str, Any]] = DeltaTable(str(table)).to_pyarrow_table().to_pylist()
    return sorted(found, key=lambda row: row["id"])


def positions(workdir: Path) -> dict[str, int]:
    """The positions of the pipeline's checkpoint."""

    async def load() -> dict[str, int]:
        backend = SqliteCheckpoints(workdir / "state.db")
        try:
            checkpoint = await backend.load("orders-to-lake")
        finally:
            await backend.aclose()
        assert checkpoint is not None
        return dict(checkpoint.positions)

    return anyio.run(load)


def bad_release(workdir: Path) -> int:
    """v1 over orders 0-49, then a buggy v2 over 50-119; the table's version after v1."""
    write_orders(workdir, 0, 50)
    run(workdir, "fixed")
    v1_end = DeltaTable(str(workdir / "table")).version()
    write_orders(workdir, 50, 120)
    run(workdir, "buggy")
    return v1_end


def test_dry_run_then_rollback_then_fixed_rerun_equals_a_clean_run(workdir: Path) -> None:
    """The dry run prints the plan and changes nothing; --yes rolls back; the rerun is clean."""
    v1_end = bad_release(workdir)
    bad_version = DeltaTable(str(workdir / "table")).version()
    preview = rollback(workdir, "--to-version", str(v1_end))
    assert 0 == preview.returncode, preview.stderr
    assert f"version {bad_version} -> {v1_end}" in preview.stdout
    assert "orders.jsonl: 120 -> 50 (70 records to reprocess)" in preview.stdout
    assert "dry run: nothing changed" in preview.stdout
    unchanged = (DeltaTable(str(workdir / "table")).version(), positions(workdir))
    assert (bad_version, {"orders.jsonl": 120}) == unchanged
    done = rollback(workdir, "--to-version", str(v1_end), "--yes")
    assert 0 == done.returncode, done.stderr
    assert ({"orders.jsonl": 50}, 50) == (positions(workdir), len(rows(workdir / "table")))
    run(workdir, "fixed")
    run(workdir, "clean")
    assert rows(workdir / "clean") == rows(workdir / "table")


def test_a_crash_between_checkpoint_and_table_is_safe_and_a_rerun_by_time_finishes(
    workdir: Path,
) -> None:
    """Positions set, table not restored: a run writes nothing twice; a rollback by time ends it."""
    write_orders(workdir, 0, 50)
    run(workdir, "fixed")
    v1_end = DeltaTable(str(workdir / "table")).version()
    at = datetime.now(UTC).isoformat()  # after v1's last checkpoint, before v2's first
    write_orders(workdir, 50, 120)
    run(workdir, "buggy")
    bad = rows(workdir / "table")
    store = str(workdir / "state.db")
    # The first step of a rollback alone, as a crash before the restore leaves it.
    assert 0 == riprap.cli.main(["checkpoint", "set", store, "orders.jsonl=50"])
    run(workdir, "fixed")
    assert (bad, {"orders.jsonl": 120}) == (rows(workdir / "table"), positions(workdir))
    done = rollback(workdir, "--to", at, "--yes")
    assert 0 == done.returncode, done.stderr
    assert f"-> {v1_end}" in done.stdout
    run(workdir, "fixed")
    run(workdir, "clean")
    assert rows(workdir / "clean") == rows(workdir / "table")


def test_a_second_rollback_undoes_the_first_restore_without_force(workdir: Path) -> None:
    """The restore commit is signed by the pipeline, so rolling back past it needs no --force."""
    v1_end = bad_release(workdir)
    assert 0 == rollback(workdir, "--to-version", str(v1_end + 1), "--yes").returncode
    again = rollback(workdir, "--to-version", str(v1_end), "--yes")
    assert 0 == again.returncode, again.stderr
    assert "RESTORE by orders-to-lake/delta" in again.stdout
    assert ({"orders.jsonl": 50}, 50) == (positions(workdir), len(rows(workdir / "table")))


def test_a_sink_that_is_not_idempotent_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Moving positions back would write a plain sink's records twice: exit 2, nothing changed."""
    write_orders(workdir, 0, 10)
    run(workdir, "logged")
    version = DeltaTable(str(workdir / "table")).version()
    code = riprap.cli.main(["rollback", "p.py:logged", "--to-version", "0", "--yes"])
    refused = "sink 'log' is not idempotent" in capsys.readouterr().err
    assert (2, True, version) == (code, refused, DeltaTable(str(workdir / "table")).version())


def test_a_time_rolls_back_every_delta_sink_of_a_fan_out(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two Delta tables restored to the same time; a version number, naming one, is refused."""
    write_orders(workdir, 0, 50)
    run(workdir, "two")
    at = datetime.now(UTC).isoformat()
    good = rows(workdir / "ta"), rows(workdir / "tb")
    write_orders(workdir, 50, 120)
    run(workdir, "two_buggy")
    assert 2 == riprap.cli.main(["rollback", "p.py:two", "--to-version", "1", "--yes"])
    assert "a version names one table" in capsys.readouterr().err
    assert 0 == riprap.cli.main(["rollback", "p.py:two", "--to", at, "--yes"])
    restored = rows(workdir / "ta"), rows(workdir / "tb")
    assert (good, {"orders.jsonl": 50}) == (restored, positions(workdir))


def generation(workdir: Path) -> int:
    """The generation of the pipeline's latest checkpoint."""

    async def load() -> int:
        backend = SqliteCheckpoints(workdir / "state.db")
        try:
            checkpoint = await backend.load("orders-to-lake")
        finally:
            await backend.aclose()
        assert checkpoint is not None
        return checkpoint.generation

    return anyio.run(load)


def test_rollback_to_a_kept_generation_then_a_fixed_rerun_equals_a_clean_run(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """v1, a buggy v2 over three runs; back to v1's last generation; the fixed rerun is clean."""
    write_orders(workdir, 0, 50)
    run(workdir, "fixed")
    v1_generation, v1_end = generation(workdir), DeltaTable(str(workdir / "table")).version()
    for first in (50, 80, 110):  # three releases of the bug, each ending in its checkpoint
        write_orders(workdir, first, first + 30)
        run(workdir, "buggy")
    bad_version = DeltaTable(str(workdir / "table")).version()
    assert 0 == riprap.cli.main(["checkpoint", "history", "state.db"])
    kept = [int(line.split()[1]) for line in capsys.readouterr().out.splitlines()[1:]]
    assert (True, 3) <= (v1_generation in kept, sum(g > v1_generation for g in kept))
    preview = rollback(workdir, "--to", str(v1_generation))
    assert 0 == preview.returncode, preview.stderr
    assert f"checkpoint generation {v1_generation}, saved" in preview.stdout
    assert f"version {bad_version} -> {v1_end}" in preview.stdout
    assert "orders.jsonl: 140 -> 50 (90 records to reprocess)" in preview.stdout
    assert (bad_version, {"orders.jsonl": 140}) == (
        DeltaTable(str(workdir / "table")).version(),
        positions(workdir),
    )
    done = rollback(workdir, "--to", str(v1_generation), "--yes")
    assert 0 == done.returncode, done.stderr
    assert ({"orders.jsonl": 50}, 50) == (positions(workdir), len(rows(workdir / "table")))
    run(workdir, "fixed")
    run(workdir, "clean")
    assert rows(workdir / "clean") == rows(workdir / "table")


def test_a_generation_no_longer_kept_is_refused(workdir: Path) -> None:
    """A generation outside the kept history is a clear error naming what is kept."""
    write_orders(workdir, 0, 10)
    run(workdir, "fixed")
    refused = rollback(workdir, "--to", "999")
    assert (2, True) == (refused.returncode, "generation 999 is not kept" in refused.stderr)
