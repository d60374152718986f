"""Dead letters read back from S3: one per id, the replay source's per-object positions, purge."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest

from riprap import Source
from riprap.checkpoints import CheckpointError
from riprap.connectors.s3 import (
    OBJECT_COMPLETE,
    S3DeadLetters,
    S3DeadLetterSource,
    iter_s3_dead_letters,
    purge_s3_dead_letters,
)
from riprap.connectors.s3._dlq_reader import _delete
from riprap.deadletters import DeadLetterFilter
from tests._sources import assert_cut_at_the_limit, read_to_end, stalled_at_the_bound
from tests.engine.dlq._letters import T0, make_letter

from .conftest import client_config

if TYPE_CHECKING:
    from riprap import SourceBatch
    from riprap.deadletters import DeadLetter

    from .conftest import Store

pytestmark = [pytest.mark.anyio, pytest.mark.s3]

DAY = 86_400.0


async def write(store: Store, *groups: list[DeadLetter]) -> list[str]:
    """Store each group of letters as one object (one sink write); their keys."""
    sink = S3DeadLetters(
        store.bucket, "dlq/", endpoint_url=store.endpoint, client_config=client_config()
    )
    await sink.open()
    try:
        for group in groups:
            await sink.write(group)
        return [sink.object_key(group) for group in groups]
    finally:
        await sink.aclose()


async def read(store: Store, prefix: str = "dlq/") -> list[DeadLetter]:
    """Every letter under ``prefix``."""
    async with contextlib.aclosing(
        iter_s3_dead_letters(
            store.bucket, prefix, endpoint_url=store.endpoint, client_config=client_config()
        )
    ) as letters:
        return [letter async for letter in letters]


async def test_letters_read_back_one_per_id(store: Store) -> None:
    """Letters stored twice (in two objects) come back once, equal to what was written."""
    letters = [make_letter(i) for i in range(6)]
    await write(store, letters[:3], letters[2:5], letters[5:])
    read_back = await read(store)
    assert letters == sorted(read_back, key=lambda letter: letter.offset or 0)


async def test_an_empty_prefix_or_bucket_is_not_found(store: Store) -> None:
    """No objects under the prefix, or no such bucket: FileNotFoundError."""
    with pytest.raises(FileNotFoundError, match="no dead letters stored here"):
        await read(store, "nothing/")
    store.bucket = "no-such-bucket-here"
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        await read(store)


async def test_a_corrupt_line_names_object_and_line(store: Store) -> None:
    """A line that is not an envelope stops the read with its object and line number."""
    await store.put_lines("dlq/bad.jsonl", [make_letter(1).to_json(), b'{"version": 1}'])
    with pytest.raises(ValueError, match=rf"s3://{store.bucket}/dlq/bad.jsonl:2: dead letter"):
        await read(store)


def source(store: Store, **options: object) -> S3DeadLetterSource:
    """A replay source on the test bucket's ``dlq/`` prefix."""
    return S3DeadLetterSource(
        store.bucket,
        "dlq/",
        endpoint_url=store.endpoint,
        client_config=client_config(),
        **options,  # type: ignore[arg-type]
    )


async def drain(replay: S3DeadLetterSource, positions: dict[str, int]) -> list[SourceBatch]:
    """Open ``replay`` at ``positions`` and read it to the end, two records at a time."""
    return await read_to_end(replay, 2, positions, pipeline="orders.replay")


async def test_source_positions_are_lines_of_each_object(store: Store) -> None:
    """One partition per object; the batch ending an object ends at OBJECT_COMPLETE."""
    keys = await write(store, [make_letter(i, value=i) for i in range(3)])
    replay = source(store)
    assert isinstance(replay, Source)
    batches = await drain(replay, {})
    partition = f"dlq:s3://{store.bucket}/{keys[0]}"
    assert [([0, 1], 0, 2), ([2], 2, OBJECT_COMPLETE)] == [
        (b.values, b.start, b.end) for b in batches
    ]
    assert {partition} == {b.partition for b in batches}


async def test_source_resumes_and_skips_finished_objects(store: Store) -> None:
    """A finished object is not read again; a started one resumes at its line."""
    first, second = await write(
        store,
        [make_letter(i, value=i) for i in range(3)],
        [make_letter(10 + i, value=10 + i) for i in range(3)],
    )
    replay = source(store)
    positions = {replay.partition_of(first): OBJECT_COMPLETE, replay.partition_of(second): 1}
    batches = await drain(replay, positions)
    assert [11, 12] == [v for b in batches for v in b.values]


async def test_source_dedupes_across_objects_within_a_run(store: Store) -> None:
    """A letter in two objects is replayed from its first copy only."""
    letters = [make_letter(i, value=i) for i in range(4)]
    await write(store, letters[:3], letters[1:])
    values = [v for b in await drain(source(store), {}) for v in b.values]
    assert [0, 1, 2, 3] == sorted(values)


async def test_source_filter_ends_objects_with_nothing_to_replay(store: Store) -> None:
    """An object without matching letters yields an empty batch that completes it."""
    keys = await write(
        store,
        [make_letter(i, value=i, stage="enrich") for i in range(3)],
        [make_letter(10, value=10, stage="parse")],
    )
    replay = source(store, filter=DeadLetterFilter(stage="parse"))
    batches = await drain(replay, {})
    by_partition = {b.partition: (b.values, b.end) for b in batches}
    assert {
        replay.partition_of(keys[0]): ([], OBJECT_COMPLETE),
        replay.partition_of(keys[1]): ([10], OBJECT_COMPLETE),
    } == by_partition


async def test_a_position_past_the_object_is_a_checkpoint_error(store: Store) -> None:
    """A checkpoint that resumes beyond an object's lines means the object was replaced."""
    (key,) = await write(store, [make_letter(1)])
    replay = source(store)
    with pytest.raises(CheckpointError, match="only 1 lines; was it replaced"):
        await drain(replay, {replay.partition_of(key): 5})


async def test_purge_deletes_only_objects_whose_letters_are_all_old(store: Store) -> None:
    """All old: deleted. Old and new mixed: kept whole. All new: kept."""
    old = [make_letter(i, at=T0 - 10 * DAY) for i in range(3)]
    new = [make_letter(10 + i, at=T0) for i in range(2)]
    old_key, mixed_key, new_key = await write(store, old[:2], [old[2], new[0]], new[1:])
    report = await purge_s3_dead_letters(
        store.bucket,
        "dlq/",
        before=T0 - DAY,
        endpoint_url=store.endpoint,
        client_config=client_config(),
    )
    assert (2, 1, 1, 1, 0) == (
        report.removed_letters,
        report.removed_objects,
        report.kept_letters,
        report.kept_objects,
        report.changed_objects,
    )
    assert sorted([mixed_key, new_key]) == await store.keys("dlq/")
    assert old_key not in await store.keys("dlq/")


async def test_purge_keeps_an_object_replaced_since_it_was_read(store: Store) -> None:
    """The delete is conditional on the ETag read: a rewritten object stays."""
    await store.put("dlq/a.jsonl", make_letter(1).to_json() + b"\n")
    etag = (await store.head("dlq/a.jsonl"))["ETag"]
    await store.put("dlq/a.jsonl", make_letter(1, at=T0 + 1).to_json() + b"\n")
    outcome = await _delete(client_config(), store.client, store.bucket, "dlq/a.jsonl", etag)
    assert ("changed", ["dlq/a.jsonl"]) == (outcome, await store.keys("dlq/"))


KIB = 1024


def big_letters(count: int) -> tuple[list[DeadLetter], list[str]]:
    """``count`` letters whose values are texts of 100 KiB, numbered; and those values."""
    values = [f"{i:06d}" + "." * (100 * KIB - 6) for i in range(count)]
    return [make_letter(i, value=v) for i, v in enumerate(values)], values


async def test_a_replay_ends_its_batches_at_the_byte_limit(store: Store) -> None:
    """Twelve letters of 100 KiB in one object, batches of at most 100 records and 250,000
    bytes: each batch but the last reaches the limit with its last letter and not before, and
    says what its lines weigh; every letter comes once, in order."""
    letters, values = big_letters(12)
    await write(store, letters)
    batches = await read_to_end(source(store), 100, max_batch_bytes=250_000)
    assert values == [v for b in batches for v in b.values]
    assert_cut_at_the_limit(batches, 250_000, 100 * KIB)


async def test_a_replay_reads_no_more_letters_than_its_bytes_in_flight(store: Store) -> None:
    """40 letters of 100 KiB replayed behind a stalled sink, ``max_in_flight_bytes`` 1 MiB:
    reading stops with the batch that reaches 1 MiB (before, letters counted by records only);
    once the sink moves every letter arrives once, in order."""
    letters, values = big_letters(40)
    await write(store, letters)
    assert values == await stalled_at_the_bound("dlq-bytes", source(store), 40)
