"""Per-key ordering: account events applied one at a time per account, accounts in parallel.

Each account's balance must see its deposits and withdrawals in order, but
different accounts are independent. ``key=`` on an async step gives exactly
that: records of one key run one at a time, in input order; keys run
concurrently up to ``concurrency``.

Run: ``python examples/keyed_ordering.py``
"""

from __future__ import annotations

import random

import anyio

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink

balances: dict[str, int] = {}


async def apply(event: dict[str, object]) -> dict[str, object]:
    """Apply one event to its account (pretends to call a ledger service)."""
    account = str(event["account"])
    before = balances.get(account, 0)
    await anyio.sleep(random.random() / 1000)  # another account's event may run meanwhile
    balances[account] = before + int(event["amount"])  # type: ignore[call-overload]
    return {**event, "balance": balances[account]}


def events(count: int = 2_000) -> list[dict[str, object]]:
    """Deposits and withdrawals spread over 20 accounts."""
    rng = random.Random(7)
    return [
        {"seq": i, "account": f"acct-{rng.randrange(20):02d}", "amount": rng.randint(-50, 100)}
        for i in range(count)
    ]


def main() -> None:
    data = events()
    sink = MemorySink()
    pipeline = (
        riprap.Pipeline("ledger", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("events", data))
        .map("apply", apply, concurrency=16, key=lambda event: event["account"])
        .sink(sink)
    )
    report = riprap.run(pipeline)
    expected: dict[str, int] = {}
    for event in data:
        expected[str(event["account"])] = expected.get(str(event["account"]), 0) + int(
            event["amount"]  # type: ignore[call-overload]
        )
    print(report.format())
    print("balances correct:", expected == balances)


if __name__ == "__main__":
    main()
