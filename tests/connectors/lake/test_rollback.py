"""Rolling a Delta sink's table back after a buggy deployment, then rerunning with the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from deltalake import DeltaTable

import riprap
import riprap.cli
from riprap import ConfigError
from riprap.connectors.files import JsonLinesSource, parse_json_line
from riprap.connectors.lake import DeltaSink, rollback_delta

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

PIPELINE = "orders-to-lake"


def fixed(line: bytes) -> dict[str, Any]:
    """The right transformation: amount in cents."""
    order: dict[str, Any] = parse_json_line(line)
    return {**order, "cents": order["amount"] * 100}


def buggy(line: bytes) -> dict[str, Any]:
    """A bad release: the cents column is off by a factor of ten."""
    order: dict[str, Any] = parse_json_line(line)
    return {**order, "cents": order["amount"] * 10}


def write_orders(path: Path, first: int, last: int) -> None:
    """Append orders ``first`` to ``last`` to the input file."""
    with path.open("ab") as out:
        out.writelines(orjson.dumps({"id": i, "amount": i % 7}) + b"\n" for i in range(first, last))


def run(tmp_path: Path, table: Path, state: str, step: Callable[[bytes], dict[str, Any]]) -> None:
    """One run of the pipeline over the input file, to completion."""
    pipeline = (
        riprap.Pipeline(PIPELINE, checkpoint_path=str(tmp_path / state), batch_size=7)
        .source(JsonLinesSource(str(tmp_path / "orders.jsonl")))
        .map("price", step)
        .sink(DeltaSink(table, new_columns="refuse", max_rows=20))
    )
    assert "completed" == anyio.run(pipeline.run).outcome


def rows(table: Path) -> list[dict[str, Any]]:
    """The table's rows, sorted by id."""
    found: list[dict[str, Any]] = DeltaTable(str(table)).to_pyarrow_table().to_pylist()
    return sorted(found, key=lambda row: row["id"])


def test_rollback_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    """v1, a buggy v2, a rollback to v1's end and a fixed rerun leave the clean run's table."""
    write_orders(tmp_path / "orders.jsonl", 0, 50)
    run(tmp_path, tmp_path / "table", "state.db", fixed)
    v1_end = DeltaTable(str(tmp_path / "table")).version()
    write_orders(tmp_path / "orders.jsonl", 50, 120)
    run(tmp_path, tmp_path / "table", "state.db", buggy)
    preview = rollback_delta(tmp_path / "table", pipeline=PIPELINE, to=v1_end)
    assert (False, rows(tmp_path / "table")[-1]["cents"]) == (preview.done, 119 % 7 * 10)
    done = rollback_delta(tmp_path / "table", pipeline=PIPELINE, to=v1_end, dry_run=False)
    partition = str(tmp_path / "orders.jsonl")
    assert {partition: 50} == dict(done.positions)
    assert 70 == sum(rows for *_, rows in done.undone)
    store = str(tmp_path / "state.db")
    assert 0 == riprap.cli.main(
        ["checkpoint", "set", store, "--pipeline", PIPELINE, f"{partition}=50"]
    )
    run(tmp_path, tmp_path / "table", "state.db", fixed)
    run(tmp_path, tmp_path / "clean", "clean.db", fixed)
    assert rows(tmp_path / "clean") == rows(tmp_path / "table")


def test_commits_of_other_writers_are_not_undone_silently(tmp_path: Path) -> None:
    """A rollback over another pipeline's commit needs ``force``; the dry run names it."""
    write_orders(tmp_path / "orders.jsonl", 0, 10)
    run(tmp_path, tmp_path / "table", "state.db", fixed)
    version = DeltaTable(str(tmp_path / "table")).version()
    other = (
        riprap.Pipeline("other", checkpoint_path=str(tmp_path / "other.db"))
        .source(JsonLinesSource(str(tmp_path / "orders.jsonl")))
        .map("price", fixed)
        .sink(DeltaSink(tmp_path / "table", new_columns="refuse"))
    )
    anyio.run(other.run)
    with pytest.raises(ConfigError, match="another writer needs force"):
        rollback_delta(tmp_path / "table", pipeline=PIPELINE, to=version)
    preview = rollback_delta(tmp_path / "table", pipeline=PIPELINE, to=version, force=True)
    assert f"undo version {version + 1}: WRITE by other/delta, 10 rows" in preview.describe()


def test_positions_pick_the_newest_version_that_holds_no_more(tmp_path: Path) -> None:
    """A checkpoint's positions match the newest version at or below them, even between commits."""
    write_orders(tmp_path / "orders.jsonl", 0, 70)
    run(tmp_path, tmp_path / "table", "state.db", fixed)  # commits end at 21, 42, 63 and 70
    partition = str(tmp_path / "orders.jsonl")
    history = DeltaTable(str(tmp_path / "table")).history()
    ends = {int(c["version"]): c["riprap.positions"][partition] for c in history}
    between = rollback_delta(tmp_path / "table", pipeline=PIPELINE, to={partition: 50})
    exact = rollback_delta(tmp_path / "table", pipeline=PIPELINE, to={partition: 70})
    picked = (between.to_version, dict(between.positions), exact.to_version, exact.undone)
    assert (max(v for v, end in ends.items() if end <= 50), {partition: 42}) == picked[:2]
    assert (max(ends), ()) == picked[2:]
    with pytest.raises(ConfigError, match="as old as those positions"):
        rollback_delta(tmp_path / "table", pipeline=PIPELINE, to={partition: 3})
