"""A pipeline in two halves under ``riprap run --workers 2``: each half split by its own rules."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

from riprap.connectors.sqlite import read_table_sync

if TYPE_CHECKING:
    from .conftest import KafkaHelper

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PIPELINE = Path(__file__).with_name("_through_worker.py")
FILES = 4
ORDERS = 60
CUSTOMERS = 7
DEADLINE = 90.0


def counts(folder: Path) -> dict[str, list[int]]:
    """Each customer's counts written so far, sorted."""
    database = folder / "out.db"
    try:
        rows = read_table_sync(database, "counts", key_column="key").values()
    except sqlite3.Error:  # not created yet
        return {}
    found: dict[str, list[int]] = collections.defaultdict(list)
    for row in rows:
        found[row["customer"]].append(row["orders"])
    return {customer: sorted(seen) for customer, seen in found.items()}


def test_two_workers_run_both_halves_and_count_each_order_once(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """Two workers split the files of the first half and share the group of the second:
    every customer is counted 1..n exactly, and SIGTERM stops both cleanly."""
    orders = [
        {"id": f"{f}-{n}", "customer": f"c{(f * ORDERS + n) % CUSTOMERS}"}
        for f in range(FILES)
        for n in range(ORDERS)
    ]
    for f in range(FILES):
        lines = [orjson.dumps(order) for order in orders[f * ORDERS : (f + 1) * ORDERS]]
        (tmp_path / f"in-{f}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected = collections.Counter(order["customer"] for order in orders)
    topic = anyio.run(kafka.create_topic, 3)
    env = {**os.environ, "RIPRAP_TEST_BOOTSTRAP": kafka.bootstrap, "RIPRAP_TEST_TOPIC": topic}
    command = [sys.executable, "-m", "riprap.cli", "run", f"{PIPELINE}:pipeline", "--workers", "2"]
    with (tmp_path / "run.out").open("wb") as out, (tmp_path / "run.err").open("wb") as err:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline and proc.poll() is None:
                if {c: len(s) for c, s in counts(tmp_path).items()} == dict(expected):
                    break
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
    report = (tmp_path / "run.out").read_text()
    assert 0 == code, (tmp_path / "run.err").read_text()[-3000:]
    assert {c: list(range(1, n + 1)) for c, n in expected.items()} == counts(tmp_path)
    assert "  workers                    2" in report
    assert "first half:\n  pipeline through-counts.by_customer: completed" in report
