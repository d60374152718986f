"""Validate, deduplicate and quality-gate orders on their way into SQLite.

The example writes 5,000 synthetic order deliveries as JSON Lines (one in ten
is a duplicated delivery, about one in a hundred is invalid), then runs::

    parse -> validate -> dedupe -> quality gate -> SQLite (upsert by id)

with SQLite checkpoints and a JSON Lines dead-letter queue. Invalid orders are
dead-lettered with the field and the rule they broke; duplicates are dropped;
every window of 500 orders is checked (no missing customers, a plausible mean
amount, known currencies, the row count against the input) before any of it
reaches the table. Run it twice: the second run resumes from the checkpoint and
writes nothing new. With ``--zero-bug`` a transform zeroes the amounts of the
second half of the orders: the gate halts the run before they are written.

    python examples/quality_and_dedupe.py [--data-dir DIR] [--zero-bug]

Without ``--data-dir`` everything goes to a new temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import orjson

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink, read_table
from riprap.stages.dedupe import Dedupe
from riprap.stages.quality import (
    Mean,
    NullRate,
    QualityGate,
    QualityGateError,
    References,
    RowCount,
)
from riprap.stages.validate import Expect, Validate

ORDERS = 5_000
CURRENCIES = frozenset({"EUR", "USD", "GBP"})


def order(n: int) -> dict[str, Any]:
    """The ``n``-th delivery: every tenth repeats the previous order; some are invalid."""
    number = n - 1 if n % 10 == 9 else n
    value: dict[str, Any] = {
        "id": f"order-{number}",
        "customer": f"customer-{number % 97}",
        "amount": round(5.0 + (number * 37 % 1000) / 20, 2),
        "currency": sorted(CURRENCIES)[number % 3],
    }
    if number % 101 == 50:
        value["amount"] = -value["amount"]
    if number % 211 == 100:
        value["currency"] = "XXX"
    return value


def prepare(directory: Path) -> None:
    """Create ``directory`` and the input file (one JSON order per line) if missing; blocking."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "orders.jsonl"
    if not path.exists():
        path.write_bytes(b"".join(orjson.dumps(order(n)) + b"\n" for n in range(ORDERS)))


def build(directory: Path, *, zero_bug: bool = False) -> riprap.Pipeline:
    """The pipeline over the files in ``directory``."""

    def convert(value: dict[str, Any]) -> dict[str, Any]:
        if zero_bug and int(value["id"].rsplit("-", 1)[1]) >= ORDERS // 2:
            return {**value, "amount": 0.0}  # the bug: a unit conversion gone wrong
        return value

    return (
        riprap.Pipeline(
            "orders-quality",
            checkpoint=riprap.checkpoints.SqliteCheckpoints(directory / "checkpoints.db"),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(directory / "dlq.jsonl"),
        )
        .source(JsonLinesSource(directory / "orders.jsonl"))
        .map("parse", orjson.loads)
        .stage(
            Validate(
                "validate",
                Expect.required("id", "customer", "amount", "currency"),
                Expect.instance_of("amount", int, float),
                Expect.in_range("amount", min=0),
                Expect.one_of("currency", CURRENCIES),
            )
        )
        .map("convert", convert)
        .stage(Dedupe("dedupe", key="id", max_keys=100_000))
        .stage(
            QualityGate(
                "gate",
                window=500,
                checks=[
                    NullRate("customer", max_rate=0.0),
                    Mean("amount", min=10.0, max=40.0),
                    References("currency", CURRENCIES),
                    RowCount(tolerance=0.2),  # dedupe and validation drop about 11%
                ],
                on_breach="halt",
            )
        )
        .sink(SqliteSink(directory / "orders.db", table="orders", key="id"))
    )


async def main(directory: Path, *, zero_bug: bool = False) -> list[riprap.RunReport]:
    """Write the input if missing and run the pipeline twice; return both reports."""
    await anyio.to_thread.run_sync(prepare, directory)
    reports = []
    for attempt in ("first run", "second run (resumes)"):
        print(f"== {attempt}")
        report = await build(directory, zero_bug=zero_bug).run()
        print(report.format())
        reports.append(report)
    rows = await read_table(directory / "orders.db", "orders")
    print(f"{len(rows)} orders in {directory / 'orders.db'}")
    return reports


def cli(argv: list[str] | None = None) -> int:
    """Parse arguments and run; exit code 1 when the quality gate halts the run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument("--zero-bug", action="store_true", help="inject a bug that zeroes amounts")
    args = parser.parse_args(argv)
    directory = args.data_dir or Path(tempfile.mkdtemp(prefix="riprap-quality-"))
    try:
        anyio.run(lambda: main(directory, zero_bug=args.zero_bug))
    except QualityGateError as error:
        print(f"halted: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
