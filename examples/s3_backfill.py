"""Backfill: reprocess a window of dated S3 objects, idempotently.

Input objects carry their date in the key (``events/2024-01-05/part-0001.jsonl.gz``).
The backfill selects the objects of a date window, parses and enriches every
line, and writes the result under ``backfill/``. It is safe to run again:

* the pipeline is named after the window (``backfill-2024-01-05.2024-01-07``),
  so a backfill that crashed resumes from its S3 checkpoint;
* ``--fresh`` adds a timestamp to that name, so the checkpoint starts empty and
  every object of the window is read again;
* either way the output objects are named after the input records they hold
  (:class:`~riprap.connectors.s3.S3Sink`), so reprocessing overwrites the same
  objects instead of adding copies.

Bad lines go to ``dlq/backfill/``; corrupt objects are copied to
``quarantine/`` with their reason and the run goes on.

Usage::

    RIPRAP_S3_BUCKET=my-bucket RIPRAP_S3_ENDPOINT=http://127.0.0.1:9000 \\
        python examples/s3_backfill.py 2024-01-05 2024-01-07 [--fresh]

``RIPRAP_S3_ENDPOINT`` is optional (unset: AWS); credentials and region come
from the usual AWS environment variables or configuration files.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import riprap
from riprap.connectors.files import parse_json_line
from riprap.connectors.s3 import S3Checkpoints, S3DeadLetters, S3Sink, S3Source

if TYPE_CHECKING:
    from collections.abc import Callable

INPUT = "events/"
OUTPUT = "backfill/"


def in_window(start: datetime.date, end: datetime.date) -> Callable[[str], bool]:
    """A key filter: the date after ``events/`` lies in ``[start, end]``."""

    def wanted(key: str) -> bool:
        day = key.removeprefix(INPUT).partition("/")[0]
        try:
            date = datetime.date.fromisoformat(day)
        except ValueError:
            return False
        return start <= date <= end

    return wanted


def enrich(line: bytes) -> dict[str, Any]:
    """Parse one event and add its amount in cents."""
    event: dict[str, Any] = parse_json_line(line)
    event["amount_cents"] = round(event["amount"] * 100)
    return event


def build(
    bucket: str,
    start: datetime.date,
    end: datetime.date,
    *,
    endpoint_url: str | None = None,
    fresh: bool = False,
    **client: Any,
) -> riprap.Pipeline:
    """The backfill pipeline of the window ``[start, end]``."""
    name = f"backfill-{start}.{end}"
    if fresh:
        name += f"-{time.time_ns()}"
    common: dict[str, Any] = {"endpoint_url": endpoint_url, **client}
    return (
        riprap.Pipeline(
            name,
            checkpoint=S3Checkpoints(bucket, "checkpoints/", **common),
            dead_letter=S3DeadLetters(bucket, "dlq/backfill/", **common),
        )
        .source(
            S3Source(
                bucket,
                INPUT,
                key_filter=in_window(start, end),
                quarantine_prefix="quarantine/",
                **common,
            )
        )
        .map("enrich", enrich)
        .sink(S3Sink(bucket, OUTPUT, gzip=True, **common))
    )


def main(argv: list[str]) -> int:
    """Run the backfill of the window on the command line and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", type=datetime.date.fromisoformat)
    parser.add_argument("end", type=datetime.date.fromisoformat)
    parser.add_argument("--fresh", action="store_true", help="reprocess from scratch")
    args = parser.parse_args(argv)
    bucket = os.environ.get("RIPRAP_S3_BUCKET")
    if not bucket:
        parser.error("set RIPRAP_S3_BUCKET")
    pipeline = build(
        bucket,
        args.start,
        args.end,
        endpoint_url=os.environ.get("RIPRAP_S3_ENDPOINT") or None,
        fresh=args.fresh,
    )
    report = riprap.run(pipeline)
    print(report.format())
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
