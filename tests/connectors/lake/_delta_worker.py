"""Subprocess for the Delta kill -9 test: JSON Lines -> transform -> Delta, SQLite checkpoints.

Usage: ``python _delta_worker.py INPUT CHECKPOINTS TABLE MODE [ENDPOINT]``.
With MODE ``limits`` the sink commits by count and by (real) time across
writes, with ``each`` every write is a commit; with ``parquet`` a ParquetSink
writes files into TABLE, cut by count and time. TABLE may be ``s3://...`` on the
S3 server at ENDPOINT (the test's moto server, which outlives this worker).
Batches are small and checkpoints frequent, so a run lasts long enough to be
killed between a commit and the checkpoint after it.
"""

from __future__ import annotations

import sys
from typing import Any

import riprap
import riprap.checkpoints
from riprap.connectors.files import JsonLinesSource, parse_json_line
from riprap.connectors.lake import DeltaSink, LakeS3Options, ParquetSink

PIPELINE = "delta-crash-recovery"
LIMITS: dict[str, Any] = {"max_rows": 25, "max_age": 0.05}
"""Commits of up to 25 records, 50 ms after the first of them arrived at the latest."""


def transform(line: bytes) -> dict[str, Any]:
    """Parse one line and add the derived field ``square``."""
    value: dict[str, Any] = parse_json_line(line)
    value["square"] = value["n"] * value["n"]
    return value


def build(
    source: str, checkpoints: str, table: str, *, mode: str, s3: LakeS3Options | None
) -> riprap.Pipeline:
    """The pipeline under test, with frequent checkpoints and small batches."""
    sink: DeltaSink | ParquetSink
    if mode == "parquet":
        sink = ParquetSink(table, max_rows=25, max_age=0.05, s3=s3)
    else:
        limits = LIMITS if mode == "limits" else {}
        sink = DeltaSink(table, new_columns="refuse", s3=s3, **limits)
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=riprap.checkpoints.SqliteCheckpoints(checkpoints),
            checkpoint_interval=0.02,
            batch_size=10,
            max_in_flight=40,
        )
        .source(JsonLinesSource(source))
        .map("square", transform)
        .sink(sink)
    )


def main(argv: list[str]) -> int:
    """Run to completion; the exit status says whether it completed."""
    source, checkpoints, table, mode, *endpoint = argv
    s3 = None
    if endpoint:
        s3 = LakeS3Options(endpoint_url=endpoint[0], access_key_id="k", secret_access_key="k")
    report = riprap.run(build(source, checkpoints, table, mode=mode, s3=s3))
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
