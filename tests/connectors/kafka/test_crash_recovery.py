"""Kill -9 a Kafka -> Kafka pipeline again and again: no input key is lost."""

from __future__ import annotations

import random
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import anyio.to_thread
import orjson
import pytest

pytest.importorskip("aiokafka")

from tests.engine._subprocesses import load_checkpoint, spawn, wait_for_child

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import KafkaHelper, Message

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

WORKER = Path(__file__).with_name("_kafka_worker.py")
RECORDS = 50_000
"""Enough that the tenth kill still lands mid-run (each run checkpoints a few thousand)."""
KILLS = 10
SESSION_MS = "1000"
"""A short session: a restart waits out its killed predecessor's session before it joins."""


def done(database: Path) -> int:
    """Records the last checkpoint covers (0 before the first)."""
    checkpoint = load_checkpoint(database, "kafka-crash")
    return sum(checkpoint.positions.values()) if checkpoint is not None else 0


def crash_and_restart(args: list[str], workdir: Path, database: Path) -> list[int]:
    """Kill the worker at random moments after its checkpoint moves, then run it to the end."""
    rng = random.Random(11)
    seen = [0]
    for attempt in range(KILLS):
        with spawn(args, workdir, f"run{attempt}") as proc:
            before = seen[-1]
            wait_for_child(lambda: done(database) > before, proc, "a checkpoint that moved on")  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        now = done(database)
        assert now >= seen[-1], "a checkpoint went backwards"
        seen.append(now)
        if now >= RECORDS:
            break
    before = saves(database)
    with spawn(args, workdir, "final") as proc:
        # Its own save first: the killed runs may have checkpointed everything already, and a
        # SIGTERM before the run has started (still importing) is not a stop it can handle.
        wait_for_child(
            lambda: saves(database) > before and done(database) >= RECORDS,
            proc,
            "every record checkpointed, by the final run too",
        )
        proc.send_signal(signal.SIGTERM)
        assert 0 == proc.wait(timeout=60)
    return seen


def saves(database: Path) -> int:
    """The generation of the last checkpoint: how many saves all runs made so far."""
    checkpoint = load_checkpoint(database, "kafka-crash")
    return checkpoint.generation if checkpoint is not None else 0


async def test_kill_9_ten_times_loses_no_key(
    kafka: KafkaHelper, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Ten SIGKILLs mid-run, restarts from the checkpoint: every input key reaches the output."""
    source, out = await kafka.create_topic(4), await kafka.create_topic(4)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(
        source,
        [(f"k{i}".encode(), orjson.dumps({"id": i, "qty": i % 5}), []) for i in range(RECORDS)],
    )
    database = tmp_path / "checkpoints.db"
    args = [
        *(sys.executable, str(WORKER), kafka.bootstrap, source, out, group),
        *(str(database), SESSION_MS),
    ]
    seen = await anyio.to_thread.run_sync(crash_and_restart, args, tmp_path, database)
    # Duplicates make the topic longer than RECORDS: read it to its end.
    messages = await kafka.read_to_end(out)
    keys = Counter(m.key for m in messages)
    assert {f"k{i}".encode() for i in range(RECORDS)} == set(keys)
    assert len(seen) - 1 >= min(KILLS, 3)
    # At-least-once: replays after a kill may duplicate; count them in the test report.
    record_property("kills", len(seen) - 1)
    record_property("duplicates", sum(n - 1 for n in keys.values()))


def kill_one_member(
    args_a: list[str],
    args_b: list[str],
    workdir: Path,
    committed: Callable[[], int],
    feeder: Feeder,
) -> None:
    """Run two members, kill -9 one once both made progress; the other finishes alone.

    The input grows while they join: a member that drained what was there before
    the other joined leaves the newcomer nothing to checkpoint, however fast it runs.
    """
    db_a, db_b = Path(args_a[-2]), Path(args_b[-2])
    with spawn(args_a, workdir, "member-a") as member_a, spawn(args_b, workdir, "member-b") as b:
        wait_for_child(feeding(feeder, lambda: done(db_a) > 0), member_a, "member A's checkpoint")
        wait_for_child(feeding(feeder, lambda: done(db_b) > 0), b, "member B's first checkpoint")
        member_a.send_signal(signal.SIGKILL)
        member_a.wait(timeout=30)
        # The group's committed offsets cover every record only once B has finished A's part.
        wait_for_child(lambda: committed() >= feeder.total, b, "member B taking over everything")
        b.send_signal(signal.SIGTERM)
        assert 0 == b.wait(timeout=60)


SHARED_RECORDS = 20_000
FEED_SIZE = 200
"""Records a chunk of the growing input adds, spread over every partition by key."""
FEED_EVERY = 0.1
"""Seconds between two chunks."""
FEED_CHUNKS = 300
"""Most chunks added (30 s of feeding at most)."""


def shared_messages(start: int, stop: int) -> list[Message]:
    """The shared input's records ``start`` to ``stop``, keyed ``k<i>``."""
    return [(f"k{i}".encode(), orjson.dumps({"id": i, "qty": 1}), []) for i in range(start, stop)]


class Feeder:
    """Adds a chunk of records to the input at most every :data:`FEED_EVERY` seconds."""

    def __init__(self, produce: Callable[[list[Message]], None], first: int) -> None:
        self.produce = produce
        self.total = first
        """Records in the input so far."""
        self._chunks = 0
        self._last = 0.0

    def __call__(self) -> None:
        if self._chunks >= FEED_CHUNKS or time.monotonic() - self._last < FEED_EVERY:
            return
        self.produce(shared_messages(self.total, self.total + FEED_SIZE))
        self.total += FEED_SIZE
        self._chunks += 1
        self._last = time.monotonic()


def feeding(feeder: Feeder, condition: Callable[[], bool]) -> Callable[[], bool]:
    """``condition``, feeding the input each time it is asked."""

    def check() -> bool:
        feeder()
        return condition()

    return check


async def test_two_processes_share_partitions_and_one_takes_over(
    kafka: KafkaHelper, tmp_path: Path
) -> None:
    """Two processes in one group split the partitions; kill one, the other finishes all of it."""
    source, out = await kafka.create_topic(4), await kafka.create_topic(4)
    group = f"g-{uuid.uuid4().hex}"
    await kafka.produce(source, shared_messages(0, SHARED_RECORDS))
    base = [sys.executable, str(WORKER), kafka.bootstrap, source, out, group]

    def committed() -> int:
        return sum(anyio.from_thread.run(kafka.committed, source, group).values())

    def produce(messages: list[Message]) -> None:
        anyio.from_thread.run(kafka.produce, source, messages)

    feeder = Feeder(produce, SHARED_RECORDS)
    await anyio.to_thread.run_sync(
        kill_one_member,
        [*base, str(tmp_path / "a.db"), SESSION_MS],
        [*base, str(tmp_path / "b.db"), SESSION_MS],
        tmp_path,
        committed,
        feeder,
    )
    messages = await kafka.read_to_end(out)
    assert {f"k{i}".encode() for i in range(feeder.total)} == {m.key for m in messages}
