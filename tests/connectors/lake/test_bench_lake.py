"""The lake benchmarks (W7 Parquet, W8 Delta) run at a tiny size; both sides write the same rows."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from benchmarks import bench_lake, w7_parquet, w8_delta

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@pytest.mark.parametrize("child", [w7_parquet.main, w8_delta.main], ids=["W7", "W8"])
def test_the_child_runs_both_implementations(
    child: Callable[[list[str]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each child prints one JSON line per implementation, each over every record."""
    child(["--records", "300", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("pyarrow loop", 300), ("riprap", 300)] == [(r["impl"], r["count"]) for r in lines]


def sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` sorted by order id."""
    return sorted(rows, key=lambda row: int(row["id"]))


def test_riprap_and_the_loop_write_the_same_rows(tmp_path: Path) -> None:
    """The measured work is the same: both sides store the same orders, in Parquet and in Delta."""
    path = tmp_path / "orders.jsonl"
    bench_lake.make_input(path, 1_200)
    for run in (bench_lake.loop_parquet, bench_lake.riprap_parquet):
        run(path, tmp_path / run.__name__)
    for run in (bench_lake.loop_delta, bench_lake.riprap_delta):
        run(path, tmp_path / run.__name__)
    parquet = [
        sorted_rows(ds.dataset(tmp_path / name, format="parquet").to_table().to_pylist())
        for name in ("loop_parquet", "riprap_parquet")
    ]
    delta = [
        sorted_rows(DeltaTable(str(tmp_path / name)).to_pyarrow_table().to_pylist())
        for name in ("loop_delta", "riprap_delta")
    ]
    assert (1_200, parquet[0], delta[0]) == (len(parquet[0]), parquet[1], delta[1])


def test_without_the_lake_extra_both_are_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With pyarrow and deltalake missing, each implementation is skipped, naming the extra."""
    monkeypatch.setattr(w7_parquet, "find_spec", lambda name: None)
    w8_delta.main(["--records", "10", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    reason = "pyarrow, deltalake not installed (pip install -e '.[lake]')"
    assert [("pyarrow loop", reason), ("riprap", reason)] == [
        (r["impl"], r.get("skipped")) for r in lines
    ]
