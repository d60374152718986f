"""Splitting a source among workers: files by a stable hash of the path, lists by position."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import pytest

from riprap import ConfigError
from riprap.connectors.files import JsonLinesSource
from riprap.connectors.memory import IterableSource
from tests._sources import read_to_end

if TYPE_CHECKING:
    from pathlib import Path

    from riprap import SourceBatch

pytestmark = pytest.mark.anyio


def write_files(folder: Path, count: int) -> list[str]:
    """``count`` JSON Lines files of three records each; their paths as a glob returns them."""
    paths = []
    for n in range(count):
        path = folder / f"part-{n:02}.jsonl"
        path.write_text("".join(f'{{"file": {n}, "line": {i}}}\n' for i in range(3)))
        paths.append(str(path))
    return paths


def values_by_partition(batches: list[SourceBatch]) -> dict[str, list[bytes]]:
    """Each partition's values, in reading order."""
    found: dict[str, list[bytes]] = {}
    for batch in batches:
        found.setdefault(batch.partition, []).extend(batch.values)
    return found


async def test_file_workers_read_each_file_once_by_path_hash(tmp_path: Path) -> None:
    """Three workers read disjoint sets of whole files, together every file, as the hash says."""
    paths = write_files(tmp_path, 12)
    whole = values_by_partition(await read_to_end(JsonLinesSource(str(tmp_path / "*.jsonl"))))
    shares = [
        values_by_partition(
            await read_to_end(JsonLinesSource(str(tmp_path / "*.jsonl")).for_worker(i, 3))
        )
        for i in range(3)
    ]
    expected_owners = {path: zlib.crc32(path.encode()) % 3 for path in paths}
    owners = {path: i for i, share in enumerate(shares) for path in share}
    assert expected_owners == owners
    merged = {path: values for share in shares for path, values in share.items()}
    assert whole == merged


async def test_file_share_resumes_from_its_own_positions(tmp_path: Path) -> None:
    """A worker's share resumes inside a file at the position its checkpoint holds."""
    write_files(tmp_path, 6)
    first = await read_to_end(JsonLinesSource(str(tmp_path / "*.jsonl")).for_worker(1, 2))
    partition = first[0].partition
    again = await read_to_end(
        JsonLinesSource(str(tmp_path / "*.jsonl")).for_worker(1, 2), positions={partition: 2}
    )
    expected = [b'{"file": %d, "line": 2}' % int(partition[-8:-6])]
    assert expected == values_by_partition(again)[partition]


def test_bad_worker_index_is_refused(tmp_path: Path) -> None:
    """A worker index outside ``range(count)`` is a ConfigError naming the source."""
    with pytest.raises(ConfigError, match=r"'jsonl'.*worker 2 is not in 0\.\.1"):
        JsonLinesSource(str(tmp_path / "*.jsonl")).for_worker(2, 2)


async def test_list_workers_read_every_nth_item_with_global_positions() -> None:
    """Worker i of 3 reads items i, i+3, ...; offsets are indexes in the whole list."""
    items = list(range(20))
    shares = [
        await read_to_end(IterableSource("numbers", items).for_worker(i, 3), max_records=4)
        for i in range(3)
    ]
    for i, batches in enumerate(shares):
        values = [v for b in batches for v in b.values]
        offsets = [b.offset_of(n) for b in batches for n in range(len(b))]
        assert (items[i::3], items[i::3]) == (values, offsets)
        assert batches[-1].end == items[i::3][-1] + 1


async def test_list_share_resumes_after_its_checkpoint() -> None:
    """Resumed at position 7, worker 1 of 3 goes on with item 7, then 10, 13."""
    source = IterableSource("numbers", list(range(15)), keys=lambda v: f"k{v}").for_worker(1, 3)
    batches = await read_to_end(source, positions={"memory": 7})
    keys = [key for batch in batches for key in batch.keys or []]
    expected = ([7, 10, 13], ["k7", "k10", "k13"])
    assert expected == ([value for batch in batches for value in batch.values], keys)


def test_one_shot_iterator_cannot_be_split() -> None:
    """An iterator read once cannot be shared: the split is refused, naming the source."""
    with pytest.raises(ConfigError, match="'numbers' serves a one-shot iterator"):
        IterableSource("numbers", iter(range(3))).for_worker(0, 2)
