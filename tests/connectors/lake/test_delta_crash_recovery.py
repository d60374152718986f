"""kill -9 during a JSON Lines -> Delta run, restart to completion: every record exactly once.

Each run is SIGKILLed once the table has grown by a few versions, at whatever
point it has reached: often between a commit and the checkpoint that would
cover it, so the next run replays records the table already holds. After each
kill every record before the checkpointed position must be in the table (I1);
after the last run the table holds every input record exactly once (I2). The
table is on local disk or on S3 (the moto server, which outlives the workers).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable

from tests.engine._subprocesses import DEADLINE, checkpoint_position, spawn, wait_for_child

from ._delta_worker import PIPELINE
from .conftest import s3_options

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_delta_worker.py")
RECORDS = 4000
"""Enough input that no run reaches its end before it is killed, however late the kill lands."""
KILLS = 10


class Table:
    """Test-side view of the table: how many versions it has and what rows it holds."""

    suffix = ".json"
    """Its log's commit files, whose number is the number of versions."""

    def __init__(self, location: str, endpoint: str | None) -> None:
        self.location = location
        options = None if endpoint is None else s3_options(endpoint)
        self.storage = None if options is None else options.delta_storage_options()
        self.files: pafs.FileSystem = (
            pafs.LocalFileSystem() if options is None else options.filesystem()
        )
        self.log = location.removeprefix("s3://") + "/_delta_log"
        self.root = location.removeprefix("s3://")

    def versions(self) -> int:
        """How many versions the table has (commit files in its log)."""
        infos = self.files.get_file_info(pafs.FileSelector(self.log, allow_not_found=True))
        return sum(1 for info in infos if info.base_name.endswith(self.suffix))

    def rows(self) -> list[dict[str, Any]]:
        """Every row of the table."""
        table = DeltaTable(self.location, storage_options=self.storage)
        rows: list[dict[str, Any]] = table.to_pyarrow_table().to_pylist()
        return rows

    def numbers(self) -> list[int]:
        """The ``n`` of every row, sorted, duplicates kept."""
        if not self.versions():
            return []
        rows = self.rows()
        assert [] == [row for row in rows if row["square"] != row["n"] ** 2]
        return sorted(row["n"] for row in rows)


class Files(Table):
    """Test-side view of a ParquetSink's output: files count as versions."""

    suffix = ".parquet"

    def __init__(self, location: str, source: Path) -> None:
        super().__init__(location, None)
        self.log = f"{location}/{quote(str(source), safe='')}"  # the source partition's folder

    def rows(self) -> list[dict[str, Any]]:
        """Every row of every file."""
        rows: list[dict[str, Any]] = ds.dataset(self.log, format="parquet").to_table().to_pylist()
        return rows


def kill_and_restart(
    tmp_path: Path, table: Table, extra: list[str], records: int = RECORDS
) -> None:
    """Kill the worker ``KILLS`` times mid-run, then let it finish; check I1 and I2."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps({"n": i}) + b"\n" for i in range(records)))
    checkpoints = tmp_path / "state.db"
    args = [sys.executable, str(WORKER), str(source), str(checkpoints), table.location, *extra]
    covered: list[int] = []
    for run in range(KILLS):
        target = table.versions() + 2

        def grown(target: int = target) -> bool:
            return table.versions() >= target

        with spawn(args, tmp_path, f"run-{run}") as proc:
            wait_for_child(grown, proc, f"{target} table versions")
            proc.kill()
            proc.wait(timeout=DEADLINE)
        assert -signal.SIGKILL == proc.returncode, f"run {run} ended before it could be killed"
        position = checkpoint_position(checkpoints, PIPELINE, str(source))
        assert set() == set(range(position)) - set(table.numbers())
        covered.append(position)
    with spawn(args, tmp_path, "final") as proc:
        returncode = proc.wait(timeout=DEADLINE)
    assert 0 == returncode, (tmp_path / "final.err").read_text()
    assert sorted(covered) == covered, "the checkpoint went backwards"
    assert list(range(records)) == table.numbers()


@pytest.mark.parametrize(
    ("mode", "records"),
    # A commit per write of 10 records is slow: ten kills cover a few hundred of them.
    [("each", 1000), ("limits", RECORDS)],
    ids=["commit-per-write", "count-and-time"],
)
def test_kill_and_restart_commits_every_record_once(
    tmp_path: Path, mode: str, records: int
) -> None:
    """SIGKILLed runs never checkpoint past uncommitted records, and after the last run
    the local table holds every input record exactly once.
    """
    kill_and_restart(tmp_path, Table(str(tmp_path / "table"), None), [mode], records)


@pytest.mark.s3
def test_kill_and_restart_on_s3(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    """The same on S3: commits by count and time, each record once in the table."""
    table = Table(f"s3://{bucket}/table", moto_endpoint)
    # S3 commits are slower, so a kill overshoots less: less input suffices.
    kill_and_restart(tmp_path, table, ["limits", moto_endpoint], records=1200)


def test_kill_and_restart_writes_each_record_to_one_parquet_file(tmp_path: Path) -> None:
    """The same for ParquetSink: after kills and a last run, each record is in one file."""
    files = Files(str(tmp_path / "out"), tmp_path / "in.jsonl")
    kill_and_restart(tmp_path, files, ["parquet"])
