"""``riprap demo``: synthetic orders -> parse -> validate -> convert -> SQLite, with checkpoints.

About 1% of the generated orders are malformed (cut-off JSON, a missing id, an
amount that is not a number); they land in the dead-letter file with their
reason while the rest reach the ``orders`` table. Run it twice: the second run
resumes from the checkpoint and the table is unchanged.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from riprap._core.errors import DataError
from riprap._core.pipeline import Pipeline
from riprap.cli._runs import run_with_report

if TYPE_CHECKING:
    from riprap.cli._console import Console

RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}


def generate_orders(path: Path, count: int, *, seed: int = 42) -> int:
    """Write ``count`` orders as JSON Lines, about 1% malformed; return how many are bad."""
    rng = random.Random(seed)
    bad = 0
    with path.open("wb") as f:
        for i in range(count):
            order: dict[str, Any] = {
                "id": f"ord-{i:06d}",
                "customer": f"customer-{rng.randrange(500):03d}",
                "email": f"Buyer{rng.randrange(10_000)}@Example.COM",
                "amount": round(rng.uniform(1, 400), 2),
                "currency": rng.choice(sorted(RATES)),
                "items": rng.randint(1, 9),
            }
            line = orjson.dumps(order)
            roll = rng.random()
            if roll < 0.004:
                line = line[: len(line) // 2]  # cut off mid-record
                bad += 1
            elif roll < 0.007:
                line = orjson.dumps({k: v for k, v in order.items() if k != "id"})
                bad += 1
            elif roll < 0.010:
                line = orjson.dumps({**order, "amount": "twelve"})
                bad += 1
            f.write(line + b"\n")
    return bad


def parse(line: bytes) -> dict[str, Any]:
    """Decode one line; a cut-off line is a data error, not a crash."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error}", reason="decode_error") from None
    if not isinstance(value, dict):
        raise DataError("an order must be a JSON object", reason="validation")
    return value


def validate(order: dict[str, Any]) -> dict[str, Any]:
    """Check the fields the rest of the pipeline relies on."""
    if not isinstance(order.get("id"), str):
        raise DataError("order has no id", reason="validation")
    if not isinstance(order.get("amount"), int | float):
        raise DataError(f"order {order['id']}: amount is not a number", reason="validation")
    if order.get("currency") not in RATES:
        raise DataError(f"order {order['id']}: unknown currency", reason="validation")
    return order


async def to_eur(order: dict[str, Any]) -> dict[str, Any]:
    """Convert to EUR cents (pretends to ask a rates service, to show async steps)."""
    await anyio.sleep(0.001)
    order["amount_eur_cents"] = round(order["amount"] * RATES[order["currency"]] * 100)
    order["email"] = order["email"].lower()
    return order


def demo_pipeline(directory: Path) -> Pipeline:
    """The demo pipeline over the files in ``directory``."""
    from riprap.checkpoints._sqlite import SqliteCheckpoints
    from riprap.connectors.files import JsonLinesSource
    from riprap.connectors.sqlite import SqliteSink
    from riprap.deadletters._stores import JsonLinesDeadLetters

    return (
        Pipeline(
            "demo-orders",
            checkpoint=SqliteCheckpoints(str(directory / "checkpoints.db")),
            dead_letter=JsonLinesDeadLetters(str(directory / "dead-letters.jsonl")),
            checkpoint_interval=0.5,
            batch_size=250,
            max_in_flight=2_000,
        )
        .source(JsonLinesSource(str(directory / "orders.jsonl"), name="orders-file"))
        .map("parse", parse)
        .map("validate", validate)
        .map("to_eur", to_eur, concurrency=32)
        .sink(SqliteSink(str(directory / "orders.db"), table="orders", key="id"))
    )


def run_demo(directory: str, *, orders: int, fresh: bool, console: Console) -> int:
    """Generate the input if needed, run the pipeline with progress, print the report."""
    from riprap.connectors.sqlite import read_table_sync

    path = Path(directory)
    if fresh and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    source = path / "orders.jsonl"
    if not source.exists():
        bad = generate_orders(source, orders)
        console.message(f"generated {orders:,} orders ({bad} malformed) in {source}")
    else:
        console.message(f"resuming over {source} (delete {path} or pass --fresh to start over)")
    code = run_with_report(demo_pipeline(path), console=console)
    rows = read_table_sync(str(path / "orders.db"), "orders")
    console.result(f"orders table: {len(rows):,} rows in {path / 'orders.db'}")
    console.result(f"dead letters: riprap dlq inspect {path / 'dead-letters.jsonl'}")
    return code
