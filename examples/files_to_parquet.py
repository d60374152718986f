"""JSON Lines files to Parquet, on a local disk or S3, exactly once.

Runs::

    JSON Lines files -> parse -> price (adds amount_cents) -> Parquet files

with SQLite checkpoints in ``<data-dir>/checkpoints.db`` and dead letters
(malformed lines, records that do not fit the schema) in
``<data-dir>/dlq.jsonl``. The Parquet files are named by the line positions
they hold (``<output>/<input file>/<first>-<last>.parquet``), so a run killed
at any point and started again writes every record once: files already
stored are skipped, and nothing is written twice.

OUTPUT is a local directory or ``s3://bucket/prefix``; for S3 the endpoint
comes from ``RIPRAP_S3_ENDPOINT`` (optional, unset: AWS) and credentials from
the usual AWS environment variables::

    python examples/files_to_parquet.py 'orders/*.jsonl' out/ [--generate 10000]
    RIPRAP_S3_ENDPOINT=http://127.0.0.1:9000 \\
        python examples/files_to_parquet.py 'orders/*.jsonl' s3://lake/orders/

``--generate N`` first writes ``N`` synthetic orders (about 1% malformed) to
``<data-dir>/orders.jsonl`` and reads that file instead.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

import riprap
import riprap.deadletters
from riprap.connectors.files import JsonLinesSource, parse_json_line
from riprap.connectors.lake import LakeS3Options, ParquetSink

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("customer", pa.string()),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("amount_cents", pa.int64(), nullable=False),
    ]
)
"""Declared, so a record that does not fit is a dead letter, not a surprise column."""


def price(order: dict[str, Any]) -> dict[str, Any]:
    """Add the amount in whole cents."""
    return {**order, "amount_cents": round(order["amount"] * 100)}


def s3_options() -> LakeS3Options:
    """How to reach S3: the endpoint from ``RIPRAP_S3_ENDPOINT``, the rest from AWS defaults."""
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    return LakeS3Options(region=region, endpoint_url=os.environ.get("RIPRAP_S3_ENDPOINT"))


def build(inputs: str, output: str, data_dir: Path) -> riprap.Pipeline:
    """The pipeline: files -> parse -> price -> Parquet, checkpointed in ``data_dir``."""
    return (
        riprap.Pipeline(
            "files-to-parquet",
            checkpoint_path=str(data_dir / "checkpoints.db"),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(data_dir / "dlq.jsonl"),
            batch_size=1_000,
            max_in_flight=20_000,
        )
        .source(JsonLinesSource(inputs))
        .map("parse", parse_json_line)
        .map("price", price)
        .sink(
            ParquetSink(
                output,
                schema=SCHEMA,
                max_rows=10_000,  # cut by count: a replay cuts the same files
                max_age=30.0,  # and at least every 30 s while orders trickle in
                s3=s3_options() if output.startswith("s3://") else None,
            )
        )
    )


def generate(path: Path, count: int, seed: int = 7) -> None:
    """Write ``count`` synthetic orders to ``path``, about 1% of them malformed."""
    rng = random.Random(seed)
    with path.open("wb") as out:
        for i in range(count):
            if rng.random() < 0.01:
                out.write(b'{"id": ' + str(i).encode() + b', "amount": \n')
                continue
            order = {
                "id": i,
                "customer": f"c{rng.randrange(100)}",
                "amount": rng.randrange(100, 99_999) / 100,
            }
            out.write(orjson.dumps(order) + b"\n")


def main(argv: list[str] | None = None) -> int:
    """Run to completion and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("inputs", help="a JSON Lines file or glob pattern")
    parser.add_argument("output", help="a directory or s3://bucket/prefix")
    parser.add_argument("--data-dir", type=Path, default=Path("riprap-parquet"))
    parser.add_argument("--generate", type=int, metavar="N", help="write N synthetic orders first")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    inputs = args.inputs
    if args.generate:
        inputs = str(args.data_dir / "orders.jsonl")
        generate(Path(inputs), args.generate)
    report = riprap.run(build(inputs, args.output, args.data_dir))
    print(report.format())
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
