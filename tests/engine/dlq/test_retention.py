"""A full JSON Lines dead-letter store in a run: it stops the run, or its retention is counted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import DeadLetterWriteError, JsonLinesDeadLetters, read_dead_letters

from ._letters import make_letter

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

RECORDS = 40
BATCH = 5


def reject(value: int) -> int:
    """Every record is bad: each batch becomes one dead-letter write of :data:`BATCH` letters."""
    raise riprap.DataError(f"record {value} is bad", reason="validation")


def failing(
    path: Path,
    backend: riprap.checkpoints.MemoryCheckpoints,
    retention: Literal["keep", "delete_oldest"],
) -> riprap.Pipeline:
    """A pipeline whose every record is dead-lettered into a store of two small files."""
    line = len(make_letter().to_json()) + 1
    return (
        riprap.Pipeline(
            "full",
            checkpoint=backend,
            dead_letter=JsonLinesDeadLetters(path, max_bytes=line, backups=1, retention=retention),
            dlq_guard=None,
            batch_size=BATCH,
            max_in_flight=BATCH,
        )
        .source(IterableSource("in", list(range(RECORDS))))
        .map("reject", reject)
        .sink(MemorySink())
    )


async def test_a_full_store_stops_the_run_and_deletes_nothing(tmp_path: Path) -> None:
    """Without a retention the run stops with a clear error; every stored letter is still there."""
    path = tmp_path / "dlq.jsonl"
    backend = riprap.checkpoints.MemoryCheckpoints()
    with pytest.raises(DeadLetterWriteError, match=r"dlq\.jsonl is full: rotating would delete"):
        await failing(path, backend, "keep").run()
    stored = [letter.offset for letter in read_dead_letters(path)]
    saved = await backend.load("full")
    position = 0 if saved is None else saved.positions.get("memory", 0)
    assert list(range(2 * BATCH)) == stored  # two writes fill dlq.jsonl.1 and dlq.jsonl
    assert position <= len(stored)  # no record is done whose letter was not written


def metric(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name`` in exposition ``text``, by their sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_retention_deletes_are_counted_in_report_and_metric(tmp_path: Path) -> None:
    """With ``delete_oldest`` the run completes; the letters rotations deleted are counted."""
    path = tmp_path / "dlq.jsonl"
    pipeline = failing(path, riprap.checkpoints.MemoryCheckpoints(), "delete_oldest")
    async with pipeline.open() as running:
        report = await running.wait()
        exposition = generate_latest(running.metrics_registry).decode()
    kept = len(list(read_dead_letters(path)))
    deleted = RECORDS - kept
    assert (2 * BATCH, RECORDS, deleted) == (
        kept,
        report.dead_lettered["validation"],
        report.dead_letters_deleted,
    )
    assert f"  dlq deleted     {deleted:>12,}  (retention)" in report.format().splitlines()
    assert {(("pipeline", "full"),): float(deleted)} == metric(
        exposition, "riprap_dead_letters_deleted_total"
    )
