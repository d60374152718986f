"""Filtered replays: letters a filter leaves out stay for later replays, sent ones are skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from riprap import SourceContext
from riprap.deadletters import DeadLetterFilter, DeadLetterSource, JsonLinesDeadLetters
from tests._sources import read_batches

from ._letters import make_letter

if TYPE_CHECKING:
    from pathlib import Path

    from riprap.deadletters import DeadLetter

pytestmark = pytest.mark.anyio

STAGES = ["parse", "enrich", "parse", "enrich", "enrich", "parse"]


async def store(path: Path, letters: list[DeadLetter]) -> None:
    """Write ``letters`` to a JSON Lines store at ``path``."""
    sink = JsonLinesDeadLetters(path)
    await sink.open()
    await sink.write(letters)
    await sink.aclose()


class Outcomes:
    """Collects what a source counts besides records."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, outcome: str, count: int) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + count


async def replay(
    path: Path, positions: dict[str, int], letters: DeadLetterFilter | None = None
) -> tuple[list[object], dict[str, int], dict[str, int]]:
    """One replay run over ``path``: values sent, outcomes counted, positions after it."""
    source = DeadLetterSource(path, filter=letters)
    outcomes = Outcomes()
    await source.open(SourceContext(pipeline="orders.replay", positions=positions, count=outcomes))
    batches = await read_batches(source, max_records=2)
    await source.aclose()
    after = dict(positions)
    if batches:
        after[source.partition] = batches[-1].end
    return [v for b in batches for v in b.values], outcomes.counts, after


async def test_a_filtered_replay_has_a_partition_of_its_own(tmp_path: Path) -> None:
    """The filter is part of the partition name; the unfiltered replay keeps the bare path."""
    path = tmp_path / "dlq.jsonl"
    filtered = DeadLetterSource(path, filter=DeadLetterFilter(stage="parse", since=1.5))
    assert (f"dlq:{path}", f"dlq:{path}?stage=parse&since=1.5") == (
        DeadLetterSource(path).partition,
        filtered.partition,
    )


async def test_letters_left_out_by_a_filter_are_sent_by_a_later_replay(tmp_path: Path) -> None:
    """After a replay of 'parse' letters, a replay of all sends the others, skipping the sent."""
    path = tmp_path / "dlq.jsonl"
    await store(path, [make_letter(i, value=i, stage=s) for i, s in enumerate(STAGES)])
    parse, parse_counts, positions = await replay(path, {}, DeadLetterFilter(stage="parse"))
    rest, rest_counts, positions = await replay(path, positions)
    none, none_counts, _ = await replay(path, positions)
    assert ([0, 2, 5], {"filtered_out": 3}) == (parse, parse_counts)
    assert ([1, 3, 4], {"already_replayed": 3}) == (rest, rest_counts)
    assert ([], {"already_replayed": 6}) == (none, none_counts)


async def test_a_filtered_replay_after_a_full_one_sends_nothing_again(tmp_path: Path) -> None:
    """Letters an unfiltered replay sent are skipped by a filtered replay of the same name."""
    path = tmp_path / "dlq.jsonl"
    await store(path, [make_letter(i, value=i, stage=s) for i, s in enumerate(STAGES)])
    everything, _, positions = await replay(path, {})
    again, counts, _ = await replay(path, positions, DeadLetterFilter(stage="enrich"))
    assert ([0, 1, 2, 3, 4, 5], [], {"already_replayed": 3, "filtered_out": 3}) == (
        everything,
        again,
        counts,
    )


async def test_positions_of_other_stores_are_ignored(tmp_path: Path) -> None:
    """A position of another store, or one whose name is not a filter, skips nothing."""
    path = tmp_path / "dlq.jsonl"
    await store(path, [make_letter(i, value=i, stage=s) for i, s in enumerate(STAGES)])
    others = {f"dlq:{tmp_path / 'other.jsonl'}": 6, f"dlq:{path}?colour=red": 6, "in": 6}
    sent, counts, _ = await replay(path, others)
    assert ([0, 1, 2, 3, 4, 5], {}) == (sent, counts)
