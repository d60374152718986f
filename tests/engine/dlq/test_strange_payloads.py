"""Records orjson refuses are dead-lettered, stored and replayed exactly, in every local store.

A key or value holding a lone surrogate (text a decoder made of undecodable
bytes) or an integer beyond 64 bits once failed the dead-letter write itself
(a lone surrogate is not UTF-8), so the run stopped to keep the record, at
every restart; and an integer beyond 64 bits came back from the store as a
rounded float.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import riprap
from riprap import DataError
from riprap.checkpoints import MemoryCheckpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import DeadLetterSource, JsonLinesDeadLetters, SqliteDeadLetters

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

VALUES = [{"id": 1}, {"id": 2, "n": 10**30 + 1, "name": "caf\udce9"}, {"id": 3}]
KEYS = ["a", "caf\udce9", "c"]


def refuse_two(value: dict[str, Any]) -> dict[str, Any]:
    """Rejects record 2."""
    if value["id"] == 2:
        raise DataError("record 2 is refused", reason="refused")
    return value


@pytest.mark.parametrize("store", ["sqlite", "jsonl"])
async def test_a_record_orjson_refuses_is_dead_lettered_and_replayed_exactly(
    tmp_path: Path, store: str
) -> None:
    """The run dead-letters record 2 instead of stopping; replaying the store hands the
    pipeline the same key and value, the big integer an int with every digit.
    """
    path = tmp_path / ("dlq.db" if store == "sqlite" else "dlq.jsonl")
    letters = SqliteDeadLetters(path) if store == "sqlite" else JsonLinesDeadLetters(path)
    sink = MemorySink()
    report = await (
        riprap.Pipeline("strange", checkpoint=MemoryCheckpoints(), dead_letter=letters)
        .source(IterableSource("values", VALUES, keys=KEYS))
        .map("refuse", refuse_two)
        .sink(sink)
        .run()
    )
    replayed = MemorySink(keep_records=True)
    await (
        riprap.Pipeline("strange.replay", checkpoint=MemoryCheckpoints())
        .source(DeadLetterSource(path))
        .sink(replayed)
        .run()
    )
    assert ([1, 3], {"refused": 1}) == ([v["id"] for v in sink.values], report.dead_lettered)
    [record] = replayed.records
    assert (VALUES[1], KEYS[1]) == (record.value, record.key)
    assert int is type(record.value["n"])
