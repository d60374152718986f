"""Subprocess for the S3 kill -9 test: S3 JSON Lines -> transform -> S3 objects, S3 checkpoints.

Usage: ``python _s3_worker.py ENDPOINT BUCKET [limits]``. The test process runs
the moto server (it must outlive this worker) and passes its URL. With
``limits`` the sink cuts objects by count and by (real) time, so a replay
meets objects cut differently from how it would cut them. Batches are small and
checkpoints frequent, so a run lasts long enough to be killed mid-flight; the
run resumes from the checkpoint in ``state/``. On completion the run's report is
written to stdout as one JSON object.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

import riprap
from riprap.connectors.files import parse_json_line
from riprap.connectors.s3 import S3Checkpoints, S3ClientConfig, S3Sink, S3Source

PIPELINE = "s3-crash-recovery"
CONFIG = S3ClientConfig(
    region_name="us-east-1",
    connect_timeout=5.0,
    read_timeout=10.0,
    call_timeout=20.0,
    client_kwargs={"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
)


def transform(line: bytes) -> dict[str, Any]:
    """Parse one line and add the derived field ``square``."""
    value: dict[str, Any] = parse_json_line(line)
    value["square"] = value["n"] * value["n"]
    return value


LIMITS: dict[str, Any] = {"max_records": 25, "max_age": 0.05}
"""Objects of up to 25 records, cut 50 ms after their first record at the latest."""


def build(endpoint: str, bucket: str, *, limits: bool = False) -> riprap.Pipeline:
    """The pipeline under test, with frequent checkpoints and small batches."""
    common: dict[str, Any] = {"endpoint_url": endpoint, "client_config": CONFIG}
    return (
        riprap.Pipeline(
            PIPELINE,
            checkpoint=S3Checkpoints(bucket, "state/", **common),
            checkpoint_interval=0.02,
            batch_size=10,
            max_in_flight=40,
        )
        .source(S3Source(bucket, "in/", **common))
        .map("square", transform)
        .sink(S3Sink(bucket, "out/", **common, **(LIMITS if limits else {})))
    )


def main(argv: list[str]) -> int:
    """Run to completion and print the report as JSON."""
    endpoint, bucket, *options = argv
    report = riprap.run(build(endpoint, bucket, limits=options == ["limits"]))
    summary = {"outcome": report.outcome, "records_in": report.records_in}
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
