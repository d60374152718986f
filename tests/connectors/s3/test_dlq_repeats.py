"""Repeated letters under an S3 prefix (one ``id`` in two objects) are read, replayed, purged once.

Repeats come from a failing run that was killed after dead-lettering records
and before its checkpoint: rerun, it stores the same letters again, grouped
into other objects when its batches differ.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from riprap import SourceContext
from riprap.connectors.s3 import (
    OBJECT_COMPLETE,
    S3DeadLetterSource,
    iter_s3_dead_letters,
    purge_s3_dead_letters,
)
from riprap.deadletters import LetterIds
from tests._sources import read_batches
from tests.engine.dlq._crashed import check_replay_of_crashed_store, crash_then_finish, inspected
from tests.engine.dlq._letters import T0, make_letter
from tests.engine.dlq._replay import FAILED, check_stopped_replay_resumes, with_fix

from .conftest import client_config
from .test_dlq_reader import write

if TYPE_CHECKING:
    from pathlib import Path

    from riprap import SourceBatch
    from riprap.deadletters import DeadLetter

    from .conftest import Store

pytestmark = [pytest.mark.anyio, pytest.mark.s3]

DAY = 86_400.0


def letters(*offsets: int, at: float = T0) -> list[DeadLetter]:
    """Letters for the records at ``offsets`` (value = offset), last failed at ``at``."""
    return [make_letter(offset, value=offset, at=at) for offset in offsets]


def later(copies: list[DeadLetter]) -> list[DeadLetter]:
    """The same letters failed again a minute later (a rerun after a crash)."""
    return [replace(letter, last_failure_at=letter.last_failure_at + 60) for letter in copies]


class Outcomes:
    """A source context's ``count``: what the source reported, by outcome."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, outcome: str, count: int) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + count


async def replay_from(
    store: Store, positions: dict[str, int]
) -> tuple[list[SourceBatch], dict[str, int]]:
    """Every batch a replay of ``dlq/`` yields resumed at ``positions``, and its outcomes."""
    source = S3DeadLetterSource(
        store.bucket, "dlq/", endpoint_url=store.endpoint, client_config=client_config()
    )
    outcomes = Outcomes()
    await source.open(SourceContext(pipeline="orders.replay", positions=positions, count=outcomes))
    try:
        return await read_batches(source, 2), outcomes.counts
    finally:
        await source.aclose()


def partition(store: Store, key: str) -> str:
    """The replay partition of the object at ``key``."""
    return f"dlq:s3://{store.bucket}/{key}"


async def test_a_prefix_read_counts_the_repeats_it_folds(store: Store) -> None:
    """Letters stored in two objects are read once; the copies left out are counted."""
    await write(store, letters(0, 1, 2), [*later(letters(0, 1)), *letters(3)])
    with LetterIds() as seen:
        async with contextlib.aclosing(
            iter_s3_dead_letters(
                store.bucket,
                "dlq/",
                endpoint_url=store.endpoint,
                client_config=client_config(),
                seen=seen,
            )
        ) as read:
            found = [letter.offset or 0 async for letter in read]
        assert ([0, 1, 2, 3], 2) == (sorted(found), seen.repeats)


@pytest.mark.parametrize(("finished", "expected"), [(0, [3]), (1, [])])
async def test_resumed_replay_skips_copies_of_letters_replayed_before(
    store: Store, finished: int, expected: list[int]
) -> None:
    """Letters of an object an earlier run finished are not replayed again from another object."""
    groups = [letters(0, 1, 2), [*later(letters(0, 1, 2)), *letters(3)]]
    keys = await write(store, *groups)
    batches, outcomes = await replay_from(
        store, {partition(store, keys[finished]): OBJECT_COMPLETE}
    )
    assert (expected, {"repeats_folded": 3}) == (
        [v for b in batches for v in b.values],
        outcomes,
    )


async def test_purge_counts_a_letter_gone_only_when_no_copy_is_left(store: Store) -> None:
    """An old object goes; its letter still stored newer elsewhere counts as a repeat folded."""
    old = letters(0, 1, at=T0 - 10 * DAY)
    await write(store, old, [*later(letters(1, at=T0)), *letters(2)])
    report = await purge_s3_dead_letters(
        store.bucket,
        "dlq/",
        before=T0 - DAY,
        endpoint_url=store.endpoint,
        client_config=client_config(),
    )
    assert (1, 1, 1) == (report.removed_letters, report.repeats_folded, report.removed_objects)


@pytest.mark.slow
def test_letters_written_again_after_a_kill_are_shown_and_replayed_once(
    bucket: str, moto_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing run killed -9 before its checkpoint and rerun: each letter is seen once."""
    location = f"s3://{bucket}/dlq/"
    crash_then_finish(location, tmp_path, endpoint_url=moto_endpoint)
    store = [location, "--endpoint-url", moto_endpoint]
    total, repeats = inspected(store, capsys)
    assert (len(FAILED), True) == (total, repeats > 0)
    check_replay_of_crashed_store(store, tmp_path / "replay", repeats)
    resume = tmp_path / "resume"
    resume.mkdir()
    check_stopped_replay_resumes(store, with_fix(resume))
