"""A pipeline in two halves (through a topic) killed with SIGKILL and restarted: counts exact."""

from __future__ import annotations

import random
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

from tests.engine._subprocesses import DEADLINE, query, spawn, wait_for_child

if TYPE_CHECKING:
    from .conftest import KafkaHelper

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

WORKER = Path(__file__).with_name("_through_worker.py")
ORDERS = 2_000
KILLS = 4


def counted(directory: Path) -> int:
    """Orders counted so far: the sum of every customer's count in ``out.db``."""
    rows = query(directory / "out.db", "SELECT SUM(orders) FROM counts")
    return int(rows[0][0] or 0) if rows else 0


async def test_killed_four_times_each_customer_counts_each_order_once(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """SIGKILL mid-run, four times: the first half writes some orders twice, none counts twice."""
    rng = random.Random(11)
    orders = [{"id": i, "customer": f"c{rng.randrange(9)}"} for i in range(ORDERS)]
    lines = b"".join(orjson.dumps(order) + b"\n" for order in orders)
    (tmp_path / "orders.jsonl").write_bytes(lines)
    topic = await kafka.create_topic(3)
    args = [sys.executable, str(WORKER), kafka.bootstrap, topic]
    marks = sorted(rng.sample(range(ORDERS // 10, ORDERS * 8 // 10), KILLS))
    await anyio.to_thread.run_sync(kill_then_finish, args, tmp_path, marks)
    found = dict(query(tmp_path / "out.db", "SELECT customer, orders FROM counts"))
    assert dict(Counter(order["customer"] for order in orders)) == found


def kill_then_finish(args: list[str], directory: Path, marks: list[int]) -> None:
    """SIGKILL the worker once each mark of orders is counted; then let it count them all."""
    for number, mark in enumerate(marks):
        with spawn(args, directory, f"run-{number}") as proc:
            wait_for_child(lambda: counted(directory) >= mark, proc, f"{mark} orders counted")  # noqa: B023
            proc.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == proc.wait(timeout=DEADLINE)
    with spawn(args, directory, "last") as proc:
        wait_for_child(lambda: counted(directory) >= ORDERS, proc, "every order counted")
        proc.send_signal(signal.SIGTERM)
        assert 0 == proc.wait(timeout=DEADLINE), (directory / "last.err").read_text()[-2000:]
