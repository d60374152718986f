"""Origins: the bulk lookup sinks use agrees with the per-item one, whatever the step chain."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from riprap import Batch, SourceBatch
from riprap._core.records import ConcatOrigin, IndexOrigin, StartsOrigin
from riprap.lowlevel import Ack, DropsOrigin, Origin, SourceOrigin


def _noop() -> None:
    return None


@st.composite
def chains(draw: st.DrawFn, depth: int = 3) -> tuple[Origin | None, int]:
    """An origin built by random drops, expansions, re-orderings and joins; and its length."""
    size = draw(st.integers(0, 12))
    origin: Origin | None = SourceOrigin(SourceBatch("p", list(range(size)), start=100))
    length = size
    for _ in range(draw(st.integers(0, depth))):
        kind = draw(st.sampled_from(["drops", "starts", "index", "concat", "unknown"]))
        if kind == "drops":
            dropped = draw(st.sets(st.integers(0, max(0, length - 1)))) if length else set()
            marks = [i - k for k, i in enumerate(sorted(dropped))]
            origin, length = DropsOrigin(origin, marks), length - len(dropped)
        elif kind == "starts":
            counts = draw(st.lists(st.integers(0, 3), min_size=length, max_size=length))
            starts = [sum(counts[:i]) for i in range(length)]
            origin, length = StartsOrigin(origin, starts), sum(counts)
        elif kind == "index":
            indices = draw(st.lists(st.integers(0, max(0, length - 1)), max_size=length))
            origin, length = IndexOrigin(origin, indices if length else []), len(indices)
        elif kind == "concat":
            other, other_length = draw(chains(depth=0))
            origin = ConcatOrigin([(0, origin), (length, other)])
            length += other_length
        else:
            origin = ConcatOrigin([(0, None), (length, origin)])
            length += draw(st.integers(0, 2))
    return origin, length


@given(chains(), st.integers(0, 3))
def test_locate_all_agrees_with_locate(chain: tuple[Origin | None, int], extra: int) -> None:
    origin, length = chain
    if origin is None:
        return
    for count in (length, max(0, length - extra), length + extra):
        assert [origin.locate(i) for i in range(count)] == origin.locate_all(count)


@given(chains())
def test_records_carry_each_items_source_position(chain: tuple[Origin | None, int]) -> None:
    origin, length = chain
    batch = Batch([f"v{i}" for i in range(length)], Ack(_noop), origin)
    records = batch.records()
    assert [batch.position(i) for i in range(length)] == [(r.partition, r.offset) for r in records]
    assert batch.items == [r.value for r in records]


def test_a_derived_none_value_is_kept_not_replaced_by_the_source_value() -> None:
    source = SourceBatch("p", ["raw"], start=0, keys=[b"k"])
    record = Batch([None], Ack(_noop), SourceOrigin(source)).records()[0]
    assert record.value is None
    assert b"k" == record.key


def test_source_record_defaults_to_the_source_value() -> None:
    source: Any = SourceBatch("p", ["raw"], start=7)
    assert "raw" == source.record(0).value
    assert 7 == source.record(0).offset
