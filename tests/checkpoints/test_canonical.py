"""Canonical JSON in pieces gives exactly the bytes of one sorted ``orjson`` call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riprap.checkpoints import Checkpoint, decode
from riprap.checkpoints import _canonical as canonical


@dataclass(frozen=True)
class Deferred:
    """A deferred state: its data is built when encoded."""

    data: Any

    def materialize(self) -> Any:
        return self.data


@dataclass(frozen=True)
class Point:
    """A dataclass value, encoded as its fields."""

    x: int
    label: str


def plain(value: Any) -> Any:
    """``value`` with every deferred state and dataclass replaced by its data."""
    if isinstance(value, Deferred):
        return plain(value.data)
    if isinstance(value, Point):
        return {"label": value.label, "x": value.x}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def one_call(value: Any) -> bytes:
    return orjson.dumps(plain(value), option=orjson.OPT_SORT_KEYS)


KEYS = st.text(max_size=6)  # any code points: the pieces must sort them as orjson does
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS | st.builds(Point, st.integers(0, 9), st.text(max_size=3)),
    lambda inner: (
        st.lists(inner, max_size=30)
        | st.dictionaries(KEYS, inner, max_size=30)
        | st.builds(Deferred, inner)
    ),
    max_leaves=120,
)


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices and the small-container bound shrunk, so that a few dozen items take every path."""
    monkeypatch.setattr(canonical, "SLICE", 4)
    monkeypatch.setattr(canonical, "_SMALL", 3)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_pieces_join_to_one_sorted_call(value: Any) -> None:
    """Any mix of mappings, lists, dataclasses and deferred states, nested: the same bytes."""
    assert one_call(value) == b"".join(canonical.canonical_parts(value))


def test_a_deferred_state_deep_in_a_long_mapping_of_plain_values_is_materialized() -> None:
    """A long mapping of positions with one deferred state after its first slice."""
    value = {f"k{i:03d}": i for i in range(40)}
    value["k033"] = Deferred({"window": [1, 2, {"z": Deferred("late")}]})  # type: ignore[assignment]
    value["k021"] = Point(1, "p")  # type: ignore[assignment]
    parts = canonical.canonical_parts(value)
    assert one_call(value) == b"".join(parts)
    assert b"late" in b"".join(parts)


@pytest.mark.parametrize("key", [1, None, b"k", ("a",)])
def test_a_key_that_is_not_a_string_is_refused_in_a_long_mapping(key: object) -> None:
    """orjson refuses it in one call; the pieces refuse it too, with orjson's message."""
    value: dict[object, int] = {f"k{i}": i for i in range(20)}
    value[key] = 0
    with pytest.raises(TypeError, match="Dict key must be str"):
        canonical.canonical_parts(value)


def test_a_value_json_cannot_hold_is_refused_in_a_long_mapping() -> None:
    """A set among many positions stops the encoding, as one orjson call would."""
    value: dict[str, object] = {f"k{i}": i for i in range(20)}
    value["k7"] = {1, 2}
    with pytest.raises(TypeError):
        canonical.canonical_parts(value)


def test_a_snapshot_of_many_partitions_round_trips_with_its_checksum() -> None:
    """Thousands of positions and identities, as an S3 prefix gives: encoded canonically, decoded
    with its checksum verified, every position and identity back."""
    keys = [f"s3://b/orders/{i:05d}.jsonl" for i in range(3_000)]
    checkpoint = Checkpoint(
        pipeline="p",
        epoch=2,
        owner="o",
        positions={key: i for i, key in enumerate(keys)},
        identities={key: f"{i:016x}" for i, key in enumerate(keys)},
        state={"dedupe": Deferred({"keys": keys[:50]})},
    )
    stored = checkpoint.to_json()
    assert stored == orjson.dumps(orjson.loads(stored), option=orjson.OPT_SORT_KEYS)
    back = decode(stored, where="test", pipeline="p")
    assert dict(back.positions) == dict(checkpoint.positions)
    assert dict(back.identities) == dict(checkpoint.identities)
    assert back.state == {"dedupe": {"keys": keys[:50]}}


def test_a_deferred_state_written_as_a_dataclass_is_saved_as_its_data_inside_a_list() -> None:
    """A frozen dataclass is the natural way to write a deferred view; inside a list (encoded in
    one call) it is still saved as what it materializes to, not as its fields."""
    checkpoint = Checkpoint(
        pipeline="p", epoch=1, owner="o", state={"windows": [Deferred({"sum": 3}), 4]}
    )
    back = decode(checkpoint.to_json(), where="test", pipeline="p")
    assert back.state == {"windows": [{"sum": 3}, 4]}
