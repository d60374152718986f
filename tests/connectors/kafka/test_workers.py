"""``riprap run --workers 2`` on Kafka: two members of one group read every record once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

pytest.importorskip("aiokafka")

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import KafkaHelper, Message

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.anyio]

PIPELINE = Path(__file__).with_name("_workers_pipeline.py")
DEADLINE = 60.0
"""Seconds any one wait may take."""
ROUND = 20
"""Messages produced per round while waiting for both workers to read."""


def start(command: list[str], folder: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``command`` in ``folder``, its output in ``run.out`` and ``run.err``."""
    with (folder / "run.out").open("wb") as out, (folder / "run.err").open("wb") as err:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=err)


def tail(path: Path) -> str:
    """The end of the supervisor's stderr, to say why it failed."""
    return path.read_text(errors="replace")[-3000:]


async def run_two_workers(
    kafka: KafkaHelper,
    tmp_path: Path,
    factory: str,
    message: Callable[[int], Message],
    done: Callable[[int], bool],
) -> tuple[str, int]:
    """``riprap run --workers 2 _workers_pipeline.py:factory`` until ``done(produced)``.

    Messages are produced in rounds until both workers have written (both are
    then members), then the run is stopped with SIGTERM and must exit 0.
    Returns the topic and how many messages were produced.
    """
    topic = await kafka.create_topic(partitions=4)
    env = {
        **os.environ,
        "RIPRAP_TEST_BOOTSTRAP": kafka.bootstrap,
        "RIPRAP_TEST_TOPIC": topic,
        "RIPRAP_TEST_GROUP": f"g-{uuid.uuid4().hex[:8]}",
    }
    command = [sys.executable, "-m", "riprap.cli", "run", "-q", f"{PIPELINE}:{factory}"]
    err = tmp_path / "run.err"
    produced = 0
    proc = start([*command, "--workers", "2"], tmp_path, env)
    try:
        deadline = time.monotonic() + DEADLINE
        while len([lines for lines in outputs(tmp_path).values() if lines]) < 2:
            assert proc.poll() is None, tail(err)
            assert time.monotonic() < deadline, f"one worker never wrote:\n{tail(err)}"
            await kafka.produce(topic, [message(produced + n) for n in range(ROUND)])
            produced += ROUND
            await anyio.sleep(0.3)
        while not done(produced):
            assert proc.poll() is None, tail(err)
            assert time.monotonic() < deadline, f"records missing:\n{tail(err)}"
            await anyio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        returncode = await anyio.to_thread.run_sync(proc.wait, DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            await anyio.to_thread.run_sync(proc.wait, DEADLINE)
    assert 0 == returncode, tail(err)
    return topic, produced


async def test_two_workers_share_the_partitions_and_read_each_record_once(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """Both workers read, together every partition, and every message lands exactly once."""

    def all_read(produced: int) -> bool:
        return sum(map(len, outputs(tmp_path).values())) >= produced

    topic, produced = await run_two_workers(
        kafka, tmp_path, "pipeline", lambda i: (str(i).encode(), b"{}", []), all_read
    )
    read = [(line["p"], line["o"]) for lines in outputs(tmp_path).values() for line in lines]
    assert 2 == len(outputs(tmp_path))
    assert produced == len(read)
    assert len(read) == len(set(read)), "a record was read twice"
    assert {f"{topic}:{p}" for p in range(4)} == {partition for partition, _ in read}
    assert "pipeline kafka-workers: stopped" == (tmp_path / "run.out").read_text().splitlines()[0]


async def test_two_workers_keep_keyed_state_in_a_changelog(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """Keyed counts under ``--workers 2`` with a changelog: every key counts 1..n, once each."""

    def all_counted(produced: int) -> bool:
        ids = {line["i"] for lines in outputs(tmp_path).values() for line in lines}
        return len(ids) >= produced

    _, produced = await run_two_workers(
        kafka,
        tmp_path,
        "counts",
        lambda i: (f"k{i % 7}".encode(), str(i).encode(), []),
        all_counted,
    )
    lines = [line for per_worker in outputs(tmp_path).values() for line in per_worker]
    counted: dict[str, set[int]] = {}
    for line in lines:
        counted.setdefault(line["k"], set()).add(line["n"])
    per_key = Counter(f"k{i % 7}" for i in range(produced))
    assert {k: set(range(1, n + 1)) for k, n in per_key.items()} == counted
    # A record read twice (a rebalance's replay) counts the same both times.
    by_id: dict[int, set[int]] = {}
    for line in lines:
        by_id.setdefault(line["i"], set()).add(line["n"])
    assert [] == [i for i, ns in by_id.items() if len(ns) > 1]


def outputs(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Per output file (one per worker process): its lines."""
    return {
        path.name: [orjson.loads(line) for line in path.read_bytes().splitlines()]
        for path in sorted(folder.glob("out-*.jsonl"))
    }
