"""Child process for the dead-letter crash tests: the failing orders pipeline, slowed down.

Usage: ``python _dlq_crash_worker.py STORE BATCH_SIZE PAUSE [ENDPOINT_URL]``, run in
a work directory. STORE is a JSON Lines file, an SQLite file (``.db``),
``kafka://HOST:PORT/TOPIC`` or ``s3://BUCKET/PREFIX``. The pipeline is the one
of :mod:`tests.engine.dlq._replay` (a third of :data:`ORDERS` dead-lettered),
with a step that sleeps PAUSE seconds per record (a few milliseconds make a run
last seconds, for a run to be killed; 0 for the run that finishes). Its
checkpoint interval is an hour: the only checkpoint is the final one, so a
SIGKILL always lands after some dead-letter writes and before the checkpoint
that would cover them, and the restarted run writes them again.

After every durable dead-letter write it appends one line per letter to
``written.log``, which the test polls to know how many letters are stored.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository, for tests.*

import anyio.to_thread

import riprap
import riprap.checkpoints
import riprap.deadletters
from riprap.connectors.memory import IterableSource, MemorySink
from tests.engine.dlq._replay import ORDERS, check, orders, strict_parse

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from riprap.deadletters import DeadLetter, DeadLetterSink

LOG = "written.log"
"""One line per dead letter written durably, appended after each write."""


class LoggedDeadLetters:
    """A dead-letter sink that notes in :data:`LOG` how many letters it wrote durably."""

    def __init__(self, inner: DeadLetterSink) -> None:
        self.inner = inner
        self.name = inner.name

    async def open(self) -> None:
        await self.inner.open()

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        await self.inner.write(letters)
        await anyio.to_thread.run_sync(note_written, len(letters))

    async def aclose(self) -> None:
        await self.inner.aclose()


def note_written(count: int) -> None:
    """Append ``count`` lines to :data:`LOG`."""
    with Path(LOG).open("ab") as log:
        log.write(b"x\n" * count)


def slow_step(pause: float) -> Callable[[Any], Any]:
    """A step taking ``pause`` seconds per record, so that the test can kill the run mid-way."""

    def slow(value: Any) -> Any:
        if pause:
            time.sleep(pause)
        return value

    return slow


def store_sink(store: str, endpoint_url: str | None) -> DeadLetterSink:
    """The dead-letter sink for ``store``: a file (SQLite for ``.db``), a topic or a prefix."""
    scheme, _, rest = store.partition("://")
    if scheme == "kafka":
        from riprap.connectors.kafka import KafkaDeadLetters

        bootstrap, _, topic = rest.partition("/")
        return KafkaDeadLetters(topic, bootstrap_servers=bootstrap.split(","))
    if scheme == "s3":
        from riprap.connectors.s3 import S3DeadLetters

        bucket, _, prefix = rest.partition("/")
        return S3DeadLetters(bucket, prefix, endpoint_url=endpoint_url)
    if store.endswith(".db"):
        return riprap.deadletters.SqliteDeadLetters(store)
    return riprap.deadletters.JsonLinesDeadLetters(store)


def main(argv: list[str]) -> int:
    """Run the failing pipeline on ``STORE`` until it ends (or is killed)."""
    store, batch_size, pause, *endpoint = argv
    pipeline = (
        riprap.Pipeline(
            "orders",
            checkpoint=riprap.checkpoints.SqliteCheckpoints("failing-ckpt.db"),
            checkpoint_interval=3600.0,
            dead_letter=LoggedDeadLetters(store_sink(store, endpoint[0] if endpoint else None)),
            dlq_guard=None,  # a third of the orders fail, by design
            batch_size=int(batch_size),
        )
        .source(IterableSource("orders", orders(ORDERS)))
        .map("slow", slow_step(float(pause)))
        .map("parse", strict_parse)
        .map("check", check)
        .sink(MemorySink())
    )
    report = riprap.run(pipeline)
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
