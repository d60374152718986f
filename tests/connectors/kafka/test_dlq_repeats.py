"""Repeated letters on a dead-letter topic (one ``id`` produced twice) are read and replayed once.

Repeats come from a failing run that was killed after dead-lettering records
and before its checkpoint: rerun, it produces the same letters again, with
the same ids, possibly to other partitions.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import pytest

pytest.importorskip("aiokafka")

from riprap import SourceContext
from riprap.connectors.kafka import (
    KafkaDeadLetters,
    KafkaDeadLetterSource,
    iter_kafka_dead_letters,
)
from riprap.deadletters import LetterIds
from tests._sources import read_batches
from tests.engine.dlq._crashed import (
    KILL_AFTER,
    check_replay_of_crashed_store,
    crash_then_finish,
    inspected,
)
from tests.engine.dlq._letters import make_letter
from tests.engine.dlq._replay import FAILED, check_stopped_replay_resumes, with_fix

if TYPE_CHECKING:
    from pathlib import Path

    from riprap import SourceBatch
    from riprap.deadletters import DeadLetter

    from .conftest import KafkaHelper

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]


async def produce_to(
    kafka: KafkaHelper, topic: str, partition: int, letters: list[DeadLetter]
) -> None:
    """Write ``letters`` with the dead-letter sink, all to ``partition`` (a fixed partitioner)."""

    def to_partition(key: object, every: list[int], available: list[int]) -> int:
        return partition

    sink = KafkaDeadLetters(
        topic, bootstrap_servers=kafka.bootstrap, producer_options={"partitioner": to_partition}
    )
    await sink.open()
    try:
        await sink.write(letters)
    finally:
        await sink.aclose()


def letters(*offsets: int, later: bool = False) -> list[DeadLetter]:
    """Letters for the records at ``offsets`` (value = offset); ``later`` copies failed again."""
    made = [make_letter(offset, value=offset) for offset in offsets]
    return (
        [replace(letter, last_failure_at=letter.last_failure_at + 60) for letter in made]
        if (later)
        else made
    )


class Outcomes:
    """A source context's ``count``: what the source reported, by outcome."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, outcome: str, count: int) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + count


async def replay_from(
    source: KafkaDeadLetterSource, positions: dict[str, int]
) -> tuple[list[SourceBatch], dict[str, int]]:
    """Every batch the source yields resumed at ``positions``, and the outcomes it counted."""
    outcomes = Outcomes()
    await source.open(SourceContext(pipeline="orders.replay", positions=positions, count=outcomes))
    try:
        return await read_batches(source, 4), outcomes.counts
    finally:
        await source.aclose()


async def test_a_topic_read_gives_the_first_copy_of_each_letter(kafka: KafkaHelper) -> None:
    """Letters produced twice are read once, as first produced; the repeats are counted."""
    topic = await kafka.create_topic(1)
    await produce_to(kafka, topic, 0, [*letters(*range(6)), *letters(0, 1, 2, later=True)])
    with LetterIds() as seen:
        async with contextlib.aclosing(
            iter_kafka_dead_letters(topic, bootstrap_servers=kafka.bootstrap, seen=seen)
        ) as read:
            found = [letter async for letter in read]
        assert (letters(*range(6)), 3) == (found, seen.repeats)


async def test_resumed_replay_skips_repeats_after_its_position(kafka: KafkaHelper) -> None:
    """Resumed at offset 4, the replay sends 4, 5 and 6 but not the repeats of 0..2 after them."""
    topic = await kafka.create_topic(1)
    stored = [*letters(*range(6)), *letters(0, 1, 2, later=True), *letters(6)]
    await produce_to(kafka, topic, 0, stored)
    source = KafkaDeadLetterSource(topic, bootstrap_servers=kafka.bootstrap)
    batches, outcomes = await replay_from(source, {f"dlq:kafka:{topic}:0": 4})
    assert ([4, 5, 6], {"repeats_folded": 3}, 10) == (
        [v for b in batches for v in b.values],
        outcomes,
        batches[-1].end,
    )


async def test_resumed_replay_skips_copies_in_another_partition(kafka: KafkaHelper) -> None:
    """A letter replayed from partition 0 before the stop is not replayed from partition 1."""
    topic = await kafka.create_topic(2)
    await produce_to(kafka, topic, 0, letters(0, 1, 2))
    await produce_to(kafka, topic, 1, [*letters(0, 1, 2, later=True), *letters(3)])
    source = KafkaDeadLetterSource(topic, bootstrap_servers=kafka.bootstrap)
    batches, outcomes = await replay_from(source, {f"dlq:kafka:{topic}:0": 3})
    assert ([3], {"repeats_folded": 3}) == ([v for b in batches for v in b.values], outcomes)


@pytest.mark.slow
def test_letters_written_again_after_a_kill_are_shown_and_replayed_once(
    kafka: KafkaHelper, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing run killed -9 before its checkpoint and rerun: each letter is seen once."""
    topic = anyio.run(kafka.create_topic, 3)
    store = f"kafka://{kafka.bootstrap}/{topic}"
    killed_run_wrote = crash_then_finish(store, tmp_path)
    total, repeats = inspected([store], capsys)
    assert (len(FAILED), True) == (total, repeats >= killed_run_wrote >= KILL_AFTER)
    check_replay_of_crashed_store([store], tmp_path / "replay", repeats)
    resume = tmp_path / "resume"
    resume.mkdir()
    check_stopped_replay_resumes([store], with_fix(resume))
