"""The README's first pipeline: orders from JSON Lines into SQLite, bad lines to dead letters.

Its files live in orders-example/ under the current directory (sample orders made on first run).
"""

import json
import random
from pathlib import Path

import riprap
from riprap.checkpoints import SqliteCheckpoints
from riprap.connectors.files import JsonLinesSource, parse_json_line
from riprap.connectors.sqlite import SqliteSink
from riprap.deadletters import JsonLinesDeadLetters
from riprap.stages.validate import Expect, Validate

WORK = Path("orders-example")
ORDERS = WORK / "orders.jsonl"


def write_sample_orders(path: Path, count: int = 1_000) -> None:
    """``count`` orders, one JSON object a line; 1% cut short, 1% with the amount as text."""
    rng = random.Random(7)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as file:
        for i in range(count):
            amount = round(rng.uniform(1, 500), 2)
            order = {"id": i, "email": f"customer{i}@example.com", "amount": amount}
            if i % 100 == 50:
                order["amount"] = str(amount)  # a client that sends text
            line = json.dumps(order)
            file.write((line[:20] if i % 100 == 99 else line) + "\n")


def add_cents(order: dict) -> dict:
    return {**order, "amount_cents": round(order["amount"] * 100)}


if not ORDERS.exists():
    write_sample_orders(ORDERS)

pipeline = (
    riprap.Pipeline(
        "orders",
        checkpoint=SqliteCheckpoints(WORK / "checkpoints.db"),
        dead_letter=JsonLinesDeadLetters(WORK / "dead-letters.jsonl"),
    )
    .source(JsonLinesSource(ORDERS))
    .map("parse", parse_json_line)  # a malformed line is a dead letter, not a crash
    .stage(
        Validate(
            "validate",
            Expect.required("id", "email", "amount"),
            Expect.instance_of("amount", int, float),
            Expect.in_range("amount", min=0),
        )
    )
    .map("add_cents", add_cents)
    .sink(SqliteSink(WORK / "out" / "orders.db", table="orders", key="id"))
)

if __name__ == "__main__":
    print(riprap.run(pipeline).format())
