"""Pipelines for the worker tests, loaded by ``riprap run --workers N`` in the test's directory.

``plain``
    Reads ``in-*.jsonl`` (JSON Lines of ``{"id": ..., "n": ...}``) and upserts
    each record by id into an SQLite table: idempotent, so a replay after a
    crash leaves no duplicate.
``gated``
    The same pipeline (same name, same checkpoints) through an async step that,
    in each process, creates ``started-<pid>`` on its first record and then
    holds every record until the file ``go`` exists: the test decides when the
    workers may go on (a kill or a signal in between).
``slow_to_load``
    ``gated``, loaded by each worker only once the file ``load`` exists: the test kills
    the supervisor before the workers look at it.
``stateful``
    Deduplicates by id: stateful, so refused under more than one worker.
``keyed``
    ``plain`` with a keyed running count (``n % 7`` of each file, taken from
    the value with ``key=``): keyed state is per file, so workers that each
    read whole files count what one worker counts.
``unsplittable``
    Reads from a source that has no ``for_worker``: refused under more than one worker.
``merged``
    ``plain`` reading ``in-[0-2].jsonl`` and ``in-[3-5].jsonl`` as two sources
    merged (``early`` and ``late``): each worker reads its share of each.
``merged_unsplittable``
    Files merged with a source that has no ``for_worker``: refused, naming it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

import riprap
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.sqlite import SqliteSink
from riprap.stages.dedupe import Dedupe

if TYPE_CHECKING:
    from riprap.state import State

CHECKPOINTS = "checkpoints.db"
DATABASE = "out.db"
TABLE = "orders"
NAME = "orders"
GO = "go"
LOAD = "load"
GATE_POLLS = 6_000
"""Looks for ``go`` a held record may take (10 ms apart): a minute at most."""

_started = False


def plain() -> riprap.Pipeline:
    """``in-*.jsonl`` upserted into ``out.db`` by id."""
    return (
        riprap.Pipeline(NAME, checkpoint_path=CHECKPOINTS, checkpoint_interval=0.2)
        .source(JsonLinesSource("in-*.jsonl", decode=True))
        .sink(SqliteSink(DATABASE, table=TABLE, key="id", timeout=30.0))
    )


async def _gate(value: Any) -> Any:
    """Mark this process as started on its first record; hold records until ``go`` exists."""
    global _started
    if not _started:
        _started = True
        await anyio.Path(f"started-{os.getpid()}").touch()
    for _ in range(GATE_POLLS):
        if await anyio.Path(GO).exists():
            return value
        await anyio.sleep(0.01)
    raise TimeoutError("the test never created 'go'")


def gated() -> riprap.Pipeline:
    """``plain`` through the gate."""
    return (
        riprap.Pipeline(NAME, checkpoint_path=CHECKPOINTS, checkpoint_interval=0.2)
        .source(JsonLinesSource("in-*.jsonl", decode=True))
        .map("gate", _gate)
        .sink(SqliteSink(DATABASE, table=TABLE, key="id", timeout=30.0))
    )


def slow_to_load() -> riprap.Pipeline:
    """``gated``, but a worker loads it only once ``load`` exists (its supervisor may die first)."""
    if os.environ.get("RIPRAP_SUPERVISOR_PID"):
        for _ in range(GATE_POLLS):
            if os.path.exists(LOAD):
                break
            time.sleep(0.01)
    return gated()


def stateful() -> riprap.Pipeline:
    """``plain`` with a dedupe stage."""
    return (
        riprap.Pipeline(NAME, checkpoint_path=CHECKPOINTS)
        .source(JsonLinesSource("in-*.jsonl", decode=True))
        .stage(Dedupe("unique", key="id", max_keys=10_000))
        .sink(SqliteSink(DATABASE, table=TABLE, key="id"))
    )


def _tally(record: dict[str, Any], state: State) -> dict[str, Any]:
    """The record with how many records of its file so far had its ``n % 7``."""
    seen: int = state.get(0) + 1
    state.set(seen)
    return {**record, "seen": seen}


def keyed() -> riprap.Pipeline:
    """``plain`` through a keyed running count."""
    return (
        riprap.Pipeline(NAME, checkpoint_path=CHECKPOINTS, checkpoint_interval=0.2)
        .source(JsonLinesSource("in-*.jsonl", decode=True))
        .map("tally", _tally, state=True, key=lambda record: record["n"] % 7)
        .sink(SqliteSink(DATABASE, table=TABLE, key="id", timeout=30.0))
    )


class _Numbers:
    """A source with no ``for_worker``: a few numbers, one partition."""

    name = "numbers"

    def __init__(self) -> None:
        self._done = False

    async def open(self, context: riprap.SourceContext) -> None:
        await anyio.lowlevel.checkpoint()

    async def read(self, max_records: int) -> riprap.SourceBatch | None:
        await anyio.lowlevel.checkpoint()
        if self._done:
            return None
        self._done = True
        return riprap.SourceBatch("numbers", [{"id": "1"}], start=0)

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


def merged() -> riprap.Pipeline:
    """``plain`` over two merged file sources."""
    return (
        riprap.Pipeline(NAME, checkpoint_path=CHECKPOINTS, checkpoint_interval=0.2)
        .sources(
            early=JsonLinesSource("in-[0-2].jsonl", decode=True),
            late=JsonLinesSource("in-[3-5].jsonl", decode=True),
        )
        .sink(SqliteSink(DATABASE, table=TABLE, key="id", timeout=30.0))
    )


def merged_unsplittable() -> riprap.Pipeline:
    """Files merged with numbers from a source that cannot be split."""
    return (
        riprap.Pipeline(NAME, checkpoint_path=CHECKPOINTS)
        .sources(files=JsonLinesSource("in-*.jsonl", decode=True), numbers=_Numbers())
        .sink(SqliteSink(DATABASE, table=TABLE, key="id"))
    )


def unsplittable() -> riprap.Pipeline:
    """Numbers from a source that cannot be split."""
    return (
        riprap.Pipeline(NAME, checkpoint_path=CHECKPOINTS)
        .source(_Numbers())
        .sink(SqliteSink(DATABASE, table=TABLE, key="id"))
    )
